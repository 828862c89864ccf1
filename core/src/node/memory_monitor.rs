//! Reads node memory usage for the memory monitor, which kills the newest
//! retriable task when usage passes the threshold instead of letting the
//! kernel's OOM killer take the node down.

/// Node memory figures in bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MemInfo {
    pub(crate) total: u64,
    pub(crate) available: u64,
}

impl MemInfo {
    pub(crate) fn used_fraction(&self) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        1.0 - self.available as f64 / self.total as f64
    }
}

pub(crate) fn parse_meminfo(text: &str) -> Option<MemInfo> {
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    Some(MemInfo {
        total: field("MemTotal:")?,
        available: field("MemAvailable:")?,
    })
}

pub(crate) fn read_meminfo() -> Option<MemInfo> {
    parse_meminfo(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_meminfo() {
        let m = parse_meminfo("MemTotal:       1000 kB\nMemFree:  10 kB\nMemAvailable:    250 kB\n").unwrap();
        assert_eq!(m.total, 1_024_000);
        assert!((m.used_fraction() - 0.75).abs() < 1e-9);
        assert!(parse_meminfo("garbage").is_none());
        assert!(read_meminfo().is_some_and(|m| m.total > 0));
    }
}
