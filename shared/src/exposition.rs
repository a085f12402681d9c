//! Serving `/metrics` the way Prometheus tools read it.
//!
//! `prometheus-client` encodes OpenMetrics text only. Served as `text/plain; version=0.0.4`
//! (what we did before), that body is misread: a counter's `# TYPE x counter` names `x`
//! while its sample is `x_total`, so Prometheus stores no type or help for it and
//! `promtool check metrics` rejects it. So `/metrics` negotiates, as the Go client does:
//!
//! - a scraper that accepts `application/openmetrics-text` (Prometheus ≥ 2.5 asks for it
//!   first) gets the OpenMetrics body with that content type;
//! - anything else (`curl`, `promtool check metrics`, older scrapers) gets the same
//!   metrics converted to the Prometheus text format 0.0.4 ([`openmetrics_to_text`]).
//!
//! Both binaries also export process metrics read from `/proc/self` at scrape time
//! ([`ProcessCollector`]) and a build-info gauge, under the names the official clients use
//! (`process_resident_memory_bytes`, `process_cpu_seconds_total`, `process_open_fds`, …).

use std::fmt::Write as _;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The OpenMetrics 1.0 text format's content type.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The Prometheus text format's content type.
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The labels of a per-partition series (consumer lag), in both binaries.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    pub topic: String,
    pub partition: String,
}

/// A latency histogram with the buckets both binaries use, 1 ms to 60 s: from a map
/// update (a reconcile pass on the fake runtime, a lingering batch) to a container stop
/// that waits out its grace period or a batch waiting on a slow broker.
pub fn latency_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ])
}

/// Which exposition format a scrape gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpositionFormat {
    OpenMetrics,
    PrometheusText,
}

impl ExpositionFormat {
    /// Chooses by the request's `Accept` header: OpenMetrics when it is accepted with a
    /// quality at least that of `text/plain`, the Prometheus text format otherwise.
    pub fn negotiate(accept: Option<&str>) -> Self {
        let Some(accept) = accept else {
            return Self::PrometheusText;
        };
        let mut openmetrics: Option<f32> = None;
        let mut text: Option<f32> = None;
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let quality = parts
                .filter_map(|param| param.strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            let slot = match media.as_str() {
                "application/openmetrics-text" => &mut openmetrics,
                "text/plain" => &mut text,
                _ => continue,
            };
            *slot = Some(slot.map_or(quality, |best| best.max(quality)));
        }
        match openmetrics {
            Some(q) if q > 0.0 && q >= text.unwrap_or(0.0) => Self::OpenMetrics,
            _ => Self::PrometheusText,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Self::PrometheusText => PROMETHEUS_TEXT_CONTENT_TYPE,
        }
    }
}

/// Encodes `registry`, then the process metrics and the build info of `binary`, in
/// `format`.
pub fn render(registry: &Registry, binary: &'static str, format: ExpositionFormat) -> String {
    let mut process = Registry::default();
    process.register_collector(Box::new(ProcessCollector { binary }));
    let mut openmetrics = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode_registry(&mut openmetrics, registry);
    let _ = prometheus_client::encoding::text::encode_registry(&mut openmetrics, &process);
    let _ = prometheus_client::encoding::text::encode_eof(&mut openmetrics);
    match format {
        ExpositionFormat::OpenMetrics => openmetrics,
        ExpositionFormat::PrometheusText => openmetrics_to_text(&openmetrics),
    }
}

/// Converts the OpenMetrics text `prometheus-client` writes into the Prometheus text
/// format 0.0.4: a counter family is named after its `_total` sample, `# UNIT` lines and
/// the `# EOF` marker go, counters' `_created` samples go (0.0.4 has no such series), and
/// the types 0.0.4 lacks become `untyped` (unknown) or `gauge` (info, stateset).
pub fn openmetrics_to_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut pending_help: Option<(&str, &str)> = None;
    let mut counter_family: Option<String> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            pending_help = Some((name, help));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            counter_family = (kind == "counter").then(|| name.to_string());
            // The family is named after its samples: `<name>_total` for a counter,
            // `<name>_info` for an info metric.
            let (suffix, kind) = match kind {
                "counter" => ("_total", "counter"),
                "info" => ("_info", "gauge"),
                "unknown" => ("", "untyped"),
                "stateset" | "gaugehistogram" => ("", "gauge"),
                known => ("", known),
            };
            if let Some((_, help)) = pending_help.take() {
                let _ = writeln!(out, "# HELP {name}{suffix} {help}");
            }
            let _ = writeln!(out, "# TYPE {name}{suffix} {kind}");
            continue;
        }
        if let Some(family) = &counter_family {
            let sample = line.split(['{', ' ']).next().unwrap_or_default();
            if sample.len() == family.len() + "_created".len()
                && sample.starts_with(family.as_str())
                && sample.ends_with("_created")
            {
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Process metrics read from `/proc/self` at scrape time (Linux; elsewhere nothing), and
/// `kg_build_info`.
#[derive(Debug)]
pub struct ProcessCollector {
    pub binary: &'static str,
}

/// A reading of `/proc/self`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessSample {
    pub cpu_seconds: f64,
    pub resident_memory_bytes: i64,
    pub virtual_memory_bytes: i64,
    pub open_fds: i64,
    pub max_fds: i64,
    pub threads: i64,
    pub start_time_seconds: f64,
}

/// User-space clock ticks per second (`USER_HZ`): 100 on every Linux architecture's ABI.
const USER_HZ: f64 = 100.0;

impl ProcessSample {
    /// Reads `/proc/self`; `None` where there is no procfs.
    pub fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|text| parse_boot_time(&text));
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .map(|dir| dir.count() as i64)
            .unwrap_or(0);
        let mut sample = Self::parse(&stat, &status, &limits, boot_time)?;
        sample.open_fds = open_fds;
        Some(sample)
    }

    /// Parses the texts of `/proc/self/stat`, `/proc/self/status` and `/proc/self/limits`.
    pub fn parse(stat: &str, status: &str, limits: &str, boot_time: Option<f64>) -> Option<Self> {
        // Fields after the command name, which is in parentheses and may contain spaces.
        let after_name = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        // stat(5): field 3 (state) is fields[0]; utime is field 14, stime 15, num_threads
        // 20, starttime 22.
        let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse().ok() };
        let cpu_seconds = (field(14)? + field(15)?) / USER_HZ;
        let start_ticks = field(22)?;
        let kib = |key: &str| -> i64 {
            status
                .lines()
                .find_map(|line| line.strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|value| value.parse::<i64>().ok())
                .unwrap_or(0)
        };
        let max_fds = limits
            .lines()
            .find(|line| line.starts_with("Max open files"))
            .and_then(|line| line.split_whitespace().nth(3))
            .and_then(|soft| soft.parse::<i64>().ok())
            .unwrap_or(0);
        Some(Self {
            cpu_seconds,
            resident_memory_bytes: kib("VmRSS:") * 1024,
            virtual_memory_bytes: kib("VmSize:") * 1024,
            open_fds: 0,
            max_fds,
            threads: kib("Threads:"),
            start_time_seconds: boot_time.map_or(0.0, |boot| boot + start_ticks / USER_HZ),
        })
    }
}

fn parse_boot_time(proc_stat: &str) -> Option<f64> {
    proc_stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let info = ConstGauge::new(1i64);
        let labels = [
            ("binary", self.binary),
            ("version", env!("CARGO_PKG_VERSION")),
        ];
        let mut metric = encoder.encode_descriptor(
            "kg_build_info",
            "Build information of this binary; the value is always 1.",
            None,
            info.metric_type(),
        )?;
        info.encode(metric.encode_family(&labels)?)?;

        let Some(sample) = ProcessSample::read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(sample.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent, in seconds.",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges: [(&str, &str, f64); 6] = [
            (
                "process_resident_memory_bytes",
                "Resident memory size, in bytes.",
                sample.resident_memory_bytes as f64,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size, in bytes.",
                sample.virtual_memory_bytes as f64,
            ),
            (
                "process_open_fds",
                "Open file descriptors.",
                sample.open_fds as f64,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors (soft limit).",
                sample.max_fds as f64,
            ),
            ("process_threads", "OS threads.", sample.threads as f64),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch, in seconds.",
                sample.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::histogram::Histogram;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Op {
        operation: String,
    }

    fn sample_registry() -> Registry {
        let mut registry = Registry::with_prefix("cp");
        let counter: Counter = Counter::default();
        counter.inc();
        registry.register("registrations", "Registrations applied", counter);
        let gauge: Gauge = Gauge::default();
        gauge.set(3);
        registry.register("orphans", "Orphan \"workers\"", gauge);
        let family =
            Family::<Op, Histogram>::new_with_constructor(|| Histogram::new([0.01, 0.1, 1.0]));
        family
            .get_or_create(&Op {
                operation: "create".into(),
            })
            .observe(0.05);
        registry.register_with_unit(
            "runtime_call_duration",
            "Runtime call latency",
            prometheus_client::registry::Unit::Seconds,
            family,
        );
        registry
    }

    #[test]
    fn prometheus_scrapers_get_openmetrics_and_curl_gets_the_text_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(
            ExpositionFormat::negotiate(Some(prometheus)),
            ExpositionFormat::OpenMetrics
        );
        assert_eq!(
            ExpositionFormat::negotiate(None),
            ExpositionFormat::PrometheusText
        );
        assert_eq!(
            ExpositionFormat::negotiate(Some("*/*")),
            ExpositionFormat::PrometheusText
        );
        assert_eq!(
            ExpositionFormat::negotiate(Some(
                "text/plain;version=0.0.4,application/openmetrics-text;q=0.5"
            )),
            ExpositionFormat::PrometheusText
        );
        assert_eq!(
            ExpositionFormat::negotiate(Some("application/openmetrics-text;q=0")),
            ExpositionFormat::PrometheusText
        );
    }

    #[test]
    fn the_text_format_names_counters_after_their_samples_and_drops_openmetrics_only_lines() {
        let text = render(&sample_registry(), "test", ExpositionFormat::PrometheusText);
        assert!(
            text.contains("# HELP cp_registrations_total Registrations applied.\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE cp_registrations_total counter\ncp_registrations_total 1\n"));
        assert!(text.contains("# TYPE cp_orphans gauge\ncp_orphans 3\n"));
        assert!(
            text.contains("# HELP cp_orphans Orphan \"workers\".\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE cp_runtime_call_duration_seconds histogram\n"));
        assert!(text.contains(
            "cp_runtime_call_duration_seconds_bucket{le=\"0.1\",operation=\"create\"} 1\n"
        ));
        assert!(text.contains("# TYPE kg_build_info gauge\nkg_build_info{binary=\"test\","));
        assert!(text.contains("# TYPE process_cpu_seconds_total counter\n"));
        assert!(text.contains("# TYPE process_resident_memory_bytes gauge\n"));
        assert!(!text.contains("# EOF"));
        assert!(!text.contains("# UNIT"));
        assert!(!text.contains("unknown"));
    }

    #[test]
    fn the_openmetrics_body_is_left_as_encoded() {
        let body = render(&sample_registry(), "test", ExpositionFormat::OpenMetrics);
        assert!(body.ends_with("# EOF\n"));
        assert!(body.contains("# TYPE cp_registrations counter\ncp_registrations_total 1\n"));
        assert!(body.contains("# UNIT cp_runtime_call_duration_seconds seconds\n"));
    }

    #[test]
    fn created_samples_and_unknown_and_info_types_have_text_format_equivalents() {
        let openmetrics = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total 2\na_requests_created 1700000000.0\n# HELP b_thing Thing.\n# TYPE b_thing unknown\nb_thing 1\n# HELP c_build Build.\n# TYPE c_build info\nc_build_info{version=\"1\"} 1\n# EOF\n";
        assert_eq!(
            openmetrics_to_text(openmetrics),
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\na_requests_total 2\n# HELP b_thing Thing.\n# TYPE b_thing untyped\nb_thing 1\n# HELP c_build_info Build.\n# TYPE c_build_info gauge\nc_build_info{version=\"1\"} 1\n"
        );
    }

    #[test]
    fn process_figures_are_parsed_from_procfs_texts() {
        let stat = "4242 (control plane) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 7 0 12345 1000000 2000 18446744073709551615";
        let status =
            "Name:\tcontrol-plane\nVmSize:\t  123456 kB\nVmRSS:\t   20480 kB\nThreads:\t7\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
        let sample = ProcessSample::parse(stat, status, limits, Some(1_700_000_000.0)).unwrap();
        assert_eq!(sample.cpu_seconds, 3.0);
        assert_eq!(sample.resident_memory_bytes, 20480 * 1024);
        assert_eq!(sample.virtual_memory_bytes, 123456 * 1024);
        assert_eq!(sample.threads, 7);
        assert_eq!(sample.max_fds, 1024);
        assert_eq!(sample.start_time_seconds, 1_700_000_000.0 + 123.45);
    }

    #[test]
    fn this_process_can_be_read() {
        let sample = ProcessSample::read().expect("procfs");
        assert!(sample.resident_memory_bytes > 0);
        assert!(sample.open_fds > 0);
        assert!(sample.threads >= 1);
    }
}
