//! The proxy's Prometheus metrics, under Ray Serve's names so Ray's Serve
//! Grafana dashboard works: `ray_serve_num_http_requests_total` and
//! `ray_serve_num_http_error_requests_total` (by route, method,
//! application and status), and the latency histogram
//! `ray_serve_http_request_latency_ms` (by route and application). The
//! proxy serves them at `/-/metrics`.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Ray Serve's latency buckets, in milliseconds.
const LATENCY_BUCKETS_MS: [f64; 16] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    application: String,
    status_code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    route: String,
    method: String,
    application: String,
    error_code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    route: String,
    application: String,
}

/// The proxy's counters and histogram.
pub(crate) struct ServeMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter<u64, AtomicU64>>,
    errors: Family<ErrorLabels, Counter<u64, AtomicU64>>,
    latency: Family<LatencyLabels, Histogram>,
}

impl ServeMetrics {
    pub(crate) fn new() -> ServeMetrics {
        let mut registry = Registry::with_prefix("ray_serve");
        let requests = Family::<RequestLabels, Counter<u64, AtomicU64>>::default();
        let errors = Family::<ErrorLabels, Counter<u64, AtomicU64>>::default();
        let latency = Family::<LatencyLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(LATENCY_BUCKETS_MS)) as fn() -> Histogram,
        );
        registry.register(
            "num_http_requests",
            "HTTP requests the proxy answered",
            requests.clone(),
        );
        registry.register(
            "num_http_error_requests",
            "HTTP requests the proxy answered with a status of 400 or more",
            errors.clone(),
        );
        registry.register(
            "http_request_latency_ms",
            "Time from a request's arrival at the proxy to its response, in milliseconds",
            latency.clone(),
        );
        ServeMetrics {
            registry,
            requests,
            errors,
            latency,
        }
    }

    /// Counts one answered request. A method other than HTTP's standard
    /// ones counts as `OTHER` (a client must not add a series per made-up
    /// method); names are escaped for the text format.
    pub(crate) fn observe(&self, route: &str, application: &str, method: &str, status: u16, took: Duration) {
        const METHODS: [&str; 9] = [
            "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
        ];
        let method = if METHODS.contains(&method) { method } else { "OTHER" };
        let route = &rayforge::util::prometheus_label(route);
        let application = &rayforge::util::prometheus_label(application);
        self.requests
            .get_or_create(&RequestLabels {
                route: route.into(),
                method: method.into(),
                application: application.into(),
                status_code: status.to_string(),
            })
            .inc();
        if status >= 400 {
            self.errors
                .get_or_create(&ErrorLabels {
                    route: route.into(),
                    method: method.into(),
                    application: application.into(),
                    error_code: status.to_string(),
                })
                .inc();
        }
        self.latency
            .get_or_create(&LatencyLabels {
                route: route.into(),
                application: application.into(),
            })
            .observe(took.as_secs_f64() * 1000.0);
    }

    /// The metrics in Prometheus' text format.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!("encoding Serve's metrics: {e}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_up_methods_share_one_series_and_names_are_escaped() {
        let m = ServeMetrics::new();
        for i in 0..1000 {
            m.observe("/a", "app\"x", &format!("M{i}"), 405, Duration::from_millis(1));
        }
        let text = m.render();
        let series = text
            .lines()
            .filter(|l| l.starts_with("ray_serve_num_http_requests_total{"))
            .count();
        assert_eq!(series, 1, "{text}");
        assert!(text.contains("method=\"OTHER\",application=\"app\\\"x\""), "{text}");
    }

    #[test]
    fn requests_errors_and_latency_are_counted_under_rays_names() {
        let m = ServeMetrics::new();
        m.observe("/greet", "greet", "POST", 200, Duration::from_millis(3));
        m.observe("/greet", "greet", "POST", 200, Duration::from_millis(30));
        m.observe("/greet", "greet", "POST", 500, Duration::from_millis(7));
        let text = m.render();
        assert!(text.contains(
            "ray_serve_num_http_requests_total{route=\"/greet\",method=\"POST\",application=\"greet\",status_code=\"200\"} 2"
        ), "{text}");
        assert!(text.contains("ray_serve_num_http_error_requests_total{route=\"/greet\",method=\"POST\",application=\"greet\",error_code=\"500\"} 1"), "{text}");
        assert!(
            text.contains("ray_serve_http_request_latency_ms_count{route=\"/greet\",application=\"greet\"} 3"),
            "{text}"
        );
        assert!(
            text.contains(
                "ray_serve_http_request_latency_ms_bucket{le=\"5.0\",route=\"/greet\",application=\"greet\"} 1"
            ),
            "{text}"
        );
    }
}
