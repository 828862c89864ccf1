//! The machines a cluster runs on, as the launcher and the SSH provider
//! reach them: this machine (commands through `sh`, files through the
//! file system) or a host over SSH (`ssh` and `scp` of OpenSSH, in batch
//! mode: no prompt ever waits for a password).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// How to log in to SSH hosts.
#[derive(Debug, Clone, PartialEq)]
pub struct SshLogin {
    /// The user.
    pub user: String,
    /// The private key.
    pub key: PathBuf,
    /// The port.
    pub port: u16,
    /// The known-hosts file of the cluster (a host's key is learned on
    /// first contact, then held to).
    pub known_hosts: PathBuf,
}

/// A machine commands run on.
#[derive(Debug, Clone, PartialEq)]
pub enum Host {
    /// This machine.
    Local,
    /// A host over SSH.
    Ssh {
        /// Its address.
        addr: String,
        /// How to log in.
        login: SshLogin,
    },
}

/// Quotes `s` for a POSIX shell.
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:@%+,".contains(c)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Host {
    /// A short name for messages: `local` or the address.
    pub fn name(&self) -> &str {
        match self {
            Host::Local => "local",
            Host::Ssh { addr, .. } => addr,
        }
    }

    fn ssh_options(login: &SshLogin) -> Vec<String> {
        vec![
            "-i".into(),
            login.key.to_string_lossy().into_owned(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "ConnectTimeout=10".into(),
            "-o".into(),
            "StrictHostKeyChecking=accept-new".into(),
            "-o".into(),
            format!("UserKnownHostsFile={}", login.known_hosts.display()),
            "-o".into(),
            "LogLevel=ERROR".into(),
        ]
    }

    /// The command that runs `script` on this host through `sh -c`.
    pub fn command(&self, script: &str, tty: bool) -> Command {
        match self {
            Host::Local => {
                let mut c = Command::new("sh");
                c.args(["-c", script]);
                c
            }
            Host::Ssh { addr, login } => {
                let mut c = Command::new("ssh");
                c.args(Self::ssh_options(login)).args(["-p", &login.port.to_string()]);
                if tty {
                    c.arg("-t");
                }
                c.arg(format!("{}@{addr}", login.user))
                    .arg(format!("sh -c {}", sh_quote(script)));
                c
            }
        }
    }

    /// Runs `script` with `input` on its standard input; returns its
    /// standard output, or an error with its standard error.
    pub fn run_with_input(&self, script: &str, input: &[u8]) -> Result<String> {
        let mut child = self
            .command(script, false)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io(format!("running a command on {}", self.name()), e))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A command that does not read its input is not an error.
            let _ = stdin.write_all(input);
        }
        let out = child
            .wait_with_output()
            .map_err(|e| Error::io(format!("running a command on {}", self.name()), e))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(Error::Runtime(format!(
                "on {}: `{}` failed ({}): {}",
                self.name(),
                first_line(script),
                out.status,
                err.trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `script`; returns its standard output.
    pub fn run(&self, script: &str) -> Result<String> {
        self.run_with_input(script, &[])
    }

    /// Copies the local file or directory `from` to `to` on this host.
    pub fn copy_to(&self, from: &Path, to: &str) -> Result<()> {
        match self {
            Host::Local => copy_local(from, Path::new(to)),
            Host::Ssh { addr, login } => scp(
                login,
                &[from.to_string_lossy().into_owned()],
                &format!("{}@{addr}:{to}", login.user),
            ),
        }
    }

    /// Copies `from` on this host to the local path `to`.
    pub fn copy_from(&self, from: &str, to: &Path) -> Result<()> {
        match self {
            Host::Local => copy_local(Path::new(from), to),
            Host::Ssh { addr, login } => scp(login, &[format!("{}@{addr}:{from}", login.user)], &to.to_string_lossy()),
        }
    }
}

fn first_line(s: &str) -> String {
    let line = s.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    if line.len() > 120 {
        format!("{}...", &line[..line.floor_char_boundary(120)])
    } else {
        line.to_string()
    }
}

fn scp(login: &SshLogin, from: &[String], to: &str) -> Result<()> {
    let out = Command::new("scp")
        .args(Host::ssh_options(login))
        .args(["-P", &login.port.to_string(), "-r", "-q"])
        .args(from)
        .arg(to)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::io("running scp", e))?;
    if !out.status.success() {
        return Err(Error::Runtime(format!(
            "copying {} to {to} failed: {}",
            from.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn copy_local(from: &Path, to: &Path) -> Result<()> {
    let out = Command::new("cp")
        .arg("-r")
        .arg(from)
        .arg(to)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::io("running cp", e))?;
    if !out.status.success() {
        return Err(Error::Runtime(format!(
            "copying {} to {} failed: {}",
            from.display(),
            to.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_the_shell_and_local_commands_report_failures() {
        for s in ["plain", "with space", "it's", "$HOME `x` \"q\"", ""] {
            let out = Host::Local.run(&format!("printf %s {}", sh_quote(s))).unwrap();
            assert_eq!(out, s);
        }
        assert_eq!(Host::Local.run_with_input("cat", b"in").unwrap(), "in");
        let e = Host::Local.run("echo oops >&2; exit 3").unwrap_err().to_string();
        assert!(e.contains("oops") && e.contains("local"), "{e}");
    }
}
