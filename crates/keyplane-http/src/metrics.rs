//! `/metrics`: everything keyplane counts, in the Prometheus text format (0.0.4), encoded by
//! `prometheus-client` (names, types, label and help escaping, `+Inf` buckets). Values are read
//! when scraped — the request histograms of [`crate::observe`], the node's counters and states
//! from [`Keyplane`], and the process's from `/proc` — so nothing here costs a request anything.

use crate::observe::{Observer, Outcome, BOUNDS_NS};
use keyplane_core::runtime::feed::FeedStatus;
use keyplane_core::Keyplane;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::fmt::Error;
use std::sync::Arc;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The whole exposition, as a scrape answers it.
pub fn exposition(app: &Arc<Keyplane>, obs: &Arc<Observer>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Node {
        app: Arc::clone(app),
        obs: Arc::clone(obs),
    }));
    let mut out = String::with_capacity(16 * 1024);
    // Writing to a String cannot fail; a collector's own error would leave a partial answer.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        tracing::error!(error = %e, "could not encode the metrics");
    }
    out
}

/// Reads the node's and the process's state when scraped.
struct Node {
    app: Arc<Keyplane>,
    obs: Arc<Observer>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Node")
    }
}

fn counter<V: prometheus_client::encoding::EncodeCounterValue>(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    v: V,
) -> Result<(), Error> {
    // The encoder appends `_total` to a counter's name.
    e.encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, V, u64>(&v, None)
}

fn gauge<V: prometheus_client::encoding::EncodeGaugeValue>(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    v: V,
) -> Result<(), Error> {
    e.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&v)
}

impl Collector for Node {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), Error> {
        let app = &self.app;
        let (keys, unknown) = app.cache().len();
        let feed = app.feed_status();

        // The seven metrics of earlier versions, under the same names.
        counter(
            &mut e,
            "keyplane_credential_checks",
            "Credential checks answered since start.",
            app.checks(),
        )?;
        gauge(
            &mut e,
            "keyplane_cache_keys",
            "Credentials held in the cache.",
            keys as u64,
        )?;
        gauge(
            &mut e,
            "keyplane_cache_unknown",
            "Digests remembered as unknown (negative cache).",
            unknown as u64,
        )?;
        gauge(
            &mut e,
            "keyplane_client_secrets_expiring",
            "Client secrets that their rotation policy refuses within 7 days.",
            app.secrets_expiring_soon(),
        )?;
        gauge(
            &mut e,
            "keyplane_storage_feed_up",
            "Whether changes made on other nodes arrive (1), or the database connection is down (0).",
            u64::from(feed == FeedStatus::Live),
        )?;
        gauge(
            &mut e,
            "keyplane_storage_feed_down_seconds",
            "How long the database connection has been down (0 while up).",
            feed.lost_for_ms() as f64 / 1e3,
        )?;
        gauge(
            &mut e,
            "keyplane_cache_trusted",
            "Whether cached credentials are served (0 once the connection has been down longer than the bound).",
            u64::from(feed.cache_trusted()),
        )?;
        if let Some(ms) = app.feed_last_change_ms() {
            gauge(
                &mut e,
                "keyplane_storage_feed_last_change_timestamp_seconds",
                "When the last change made on another node arrived through the change feed (Unix time).",
                ms as f64 / 1e3,
            )?;
        }

        self.encode_requests(&mut e)?;

        let build = &self.obs.build;
        let mut labels = vec![("version", build.version.as_str())];
        if let Some(c) = &build.commit {
            labels.push(("commit", c.as_str()));
        }
        if let Some(r) = &build.rustc {
            labels.push(("rustc", r.as_str()));
        }
        e.encode_descriptor(
            "keyplane_build",
            "The running build: its version, and the commit and compiler it was built from when known.",
            None,
            MetricType::Info,
        )?
        .encode_info(&labels)?;

        process::encode(&mut e, self.obs.started)
    }
}

impl Node {
    /// The latency histograms: a series for every (route, outcome) pair seen since start.
    fn encode_requests(&self, e: &mut DescriptorEncoder<'_>) -> Result<(), Error> {
        let mut m = e.encode_descriptor(
            "keyplane_http_request_duration_seconds",
            "Time to answer a request, from its head read to its answer's head, by route group and outcome (refused and error with a reason).",
            None,
            MetricType::Histogram,
        )?;
        for (route, outcome, h) in self.obs.requests.each() {
            let (counts, total, sum) = h.snapshot();
            if total == 0 {
                continue;
            }
            // The encoder adds up the counts, and adds the `+Inf` bucket as the total.
            let buckets: [(f64, u64); BOUNDS_NS.len()] =
                std::array::from_fn(|i| (BOUNDS_NS[i] as f64 / 1e9, counts[i]));
            let route = ("route", route.as_str());
            let kind = ("outcome", outcome.as_str());
            if outcome == Outcome::Allowed {
                m.encode_family(&[route, kind])?
                    .encode_histogram::<NoLabelSet>(sum, total, &buckets, None)?;
            } else {
                m.encode_family(&[route, kind, ("reason", outcome.reason())])?
                    .encode_histogram::<NoLabelSet>(sum, total, &buckets, None)?;
            }
        }
        Ok(())
    }
}

/// The process's own metrics, under the names every Prometheus client library uses: read from
/// `/proc` on Linux; elsewhere only the start time.
mod process {
    use super::{counter, gauge, DescriptorEncoder, Error};
    use std::time::SystemTime;

    /// `/proc/<pid>/stat` counts CPU time in `USER_HZ` ticks, which Linux fixes at 100 on every
    /// architecture it exports to user space this way (`sysconf(_SC_CLK_TCK)`).
    #[cfg(target_os = "linux")]
    const TICKS_PER_SECOND: f64 = 100.0;

    pub fn encode(e: &mut DescriptorEncoder<'_>, started: SystemTime) -> Result<(), Error> {
        let stats = read();
        let start = stats
            .as_ref()
            .and_then(|s| s.start_time_seconds)
            .unwrap_or_else(|| {
                started
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0)
            });
        gauge(
            e,
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds.",
            start,
        )?;
        let Some(s) = stats else {
            return Ok(());
        };
        counter(
            e,
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            s.cpu_seconds,
        )?;
        gauge(
            e,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            s.resident_bytes,
        )?;
        gauge(
            e,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            s.virtual_bytes,
        )?;
        gauge(
            e,
            "process_open_fds",
            "Number of open file descriptors.",
            s.open_fds,
        )?;
        if let Some(max) = s.max_fds {
            gauge(
                e,
                "process_max_fds",
                "Maximum number of open file descriptors.",
                max,
            )?;
        }
        gauge(
            e,
            "process_threads",
            "Number of OS threads in the process.",
            s.threads,
        )
    }

    #[derive(Debug, Default, PartialEq)]
    pub struct Stats {
        pub cpu_seconds: f64,
        pub resident_bytes: u64,
        pub virtual_bytes: u64,
        pub open_fds: u64,
        pub max_fds: Option<u64>,
        pub threads: u64,
        pub start_time_seconds: Option<f64>,
    }

    #[cfg(not(target_os = "linux"))]
    fn read() -> Option<Stats> {
        None
    }

    #[cfg(target_os = "linux")]
    fn read() -> Option<Stats> {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let mut s = parse_stat(&read("/proc/self/stat")?)?;
        let status = read("/proc/self/status")?;
        // The resident size in kB from `status`, which needs no page size.
        s.resident_bytes = status_kb(&status, "VmRSS:").map_or(0, |kb| kb * 1024);
        s.open_fds = std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count() as u64)
            .unwrap_or(0);
        s.max_fds = read("/proc/self/limits").and_then(|l| max_open_files(&l));
        if let (Some(ticks), Some(btime)) = (
            s.start_time_seconds,
            read("/proc/stat").and_then(|t| boot_time(&t)),
        ) {
            s.start_time_seconds = Some(btime + ticks);
        } else {
            s.start_time_seconds = None;
        }
        Some(s)
    }

    /// The fields of `/proc/self/stat` used here; `start_time_seconds` is since boot.
    #[cfg(target_os = "linux")]
    pub fn parse_stat(text: &str) -> Option<Stats> {
        // The command name (field 2) is in parentheses and may hold spaces or parentheses:
        // the fields after it start at the last `)`.
        let rest = &text[text.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // `f[0]` is field 3 (state); field N is `f[N - 3]`.
        let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        Some(Stats {
            cpu_seconds: (num(14)? + num(15)?) as f64 / TICKS_PER_SECOND,
            threads: num(20)?,
            start_time_seconds: Some(num(22)? as f64 / TICKS_PER_SECOND),
            virtual_bytes: num(23)?,
            ..Stats::default()
        })
    }

    #[cfg(target_os = "linux")]
    fn status_kb(status: &str, key: &str) -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    #[cfg(target_os = "linux")]
    fn max_open_files(limits: &str) -> Option<u64> {
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        line["Max open files".len()..]
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    #[cfg(target_os = "linux")]
    fn boot_time(stat: &str) -> Option<f64> {
        stat.lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse::<u64>()
            .ok()
            .map(|s| s as f64)
    }

    #[cfg(all(test, target_os = "linux"))]
    mod tests {
        use super::*;

        #[test]
        fn stat_fields_after_a_command_with_spaces() {
            let line = "4242 (key plane) (x) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 50 0 0 20 0 7 0 123400 1048576000 5000 18446744073709551615";
            let s = parse_stat(line).unwrap();
            assert_eq!(s.cpu_seconds, 3.0);
            assert_eq!(s.threads, 7);
            assert_eq!(s.start_time_seconds, Some(1234.0));
            assert_eq!(s.virtual_bytes, 1_048_576_000);
            assert!(parse_stat("garbage").is_none());
        }

        #[test]
        fn limits_and_status() {
            let limits = "Limit                     Soft Limit           Hard Limit           Units     \nMax open files            1024                 524288               files     \n";
            assert_eq!(max_open_files(limits), Some(1024));
            assert_eq!(
                status_kb("Name:\tk\nVmRSS:\t  2048 kB\n", "VmRSS:"),
                Some(2048)
            );
            assert_eq!(boot_time("cpu 1 2\nbtime 1700000000\n"), Some(1.7e9));
        }

        #[test]
        fn this_process_reads() {
            let s = read().unwrap();
            assert!(s.resident_bytes > 0 && s.open_fds > 0 && s.threads > 0);
            assert!(s.start_time_seconds.unwrap() > 1.6e9);
        }
    }
}
