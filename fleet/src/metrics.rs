//! `/metrics` for every daemon: one registry per daemon whose families all
//! carry the daemon's prefix (`lb_dns_`, `healthd_`, `mta_`), answered in
//! the OpenMetrics format when the scraper's `Accept` asks for it and in the
//! classic Prometheus text format (`text/plain; version=0.0.4`) otherwise.
//!
//! Labelled families are declared with typed label sets (structs deriving
//! `EncodeLabelSet`); every label set known at start is created with
//! [`at_zero`], so its counter is exported as 0 before its first event.

use std::hash::Hash;

use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::registry::Registry;

/// The `Content-Type` of an OpenMetrics answer.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The `Content-Type` of a classic Prometheus text answer.
pub const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A daemon's registry: every family registered in it is named
/// `<prefix>_<name>`.
pub fn registry(prefix: &str) -> Registry {
    Registry::with_prefix(prefix)
}

/// Creates each of `known` in `family` now (counters at 0), so a scraper
/// sees every label set known at start, not only those that happened.
pub fn at_zero<L, M, C>(
    family: Family<L, M, C>,
    known: impl IntoIterator<Item = L>,
) -> Family<L, M, C>
where
    L: Clone + Hash + Eq,
    C: MetricConstructor<M>,
{
    for labels in known {
        let _ = family.get_or_create(&labels);
    }
    family
}

/// The body of `/metrics` for a request with `accept` (its `Accept` header),
/// with its content type.
pub fn encode(registry: &Registry, accept: Option<&str>) -> Result<(&'static str, String), String> {
    let mut body = String::new();
    prometheus_client::encoding::text::encode(&mut body, registry)
        .map_err(|e| format!("metrics: encoding the registry failed: {e}"))?;
    if wants_openmetrics(accept.unwrap_or("")) {
        Ok((OPENMETRICS, body))
    } else {
        Ok((CLASSIC, to_classic(&body)))
    }
}

/// What a scraper without `Accept` reads of the families `register` adds
/// to a registry with `prefix` (for tests of what a daemon exports).
pub fn scrape(prefix: &str, register: impl FnOnce(&mut Registry)) -> Result<String, String> {
    let mut registry = registry(prefix);
    register(&mut registry);
    encode(&registry, None).map(|(_, text)| text)
}

/// Whether an `Accept` header prefers OpenMetrics to the classic text format
/// (Prometheus sends both, OpenMetrics with the higher `q`).
pub fn wants_openmetrics(accept: &str) -> bool {
    let mut openmetrics = 0.0_f32;
    let mut classic = 0.0_f32;
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.strip_prefix("q="))
            .find_map(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "application/openmetrics-text" => openmetrics = openmetrics.max(q),
            "text/plain" => classic = classic.max(q),
            _ => {}
        }
    }
    openmetrics > 0.0 && openmetrics >= classic
}

/// Rewrites an OpenMetrics exposition in the classic text format: counter
/// families are named with their `_total` sample, info families become
/// `_info` gauges, `# UNIT` and `# EOF` lines and exemplars are left out.
pub fn to_classic(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (name, kind) = classic_family(name, kind);
            if let Some((_, text)) = help.take() {
                out.push_str(&format!("# HELP {name} {}\n", classic_help(text)));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
        } else if line.starts_with('#') || line.is_empty() {
            // `# UNIT`, `# EOF`: not in the classic format.
        } else {
            out.push_str(without_exemplar(line));
            out.push('\n');
        }
    }
    out
}

fn classic_family(name: &str, kind: &str) -> (String, &'static str) {
    match kind {
        "counter" => (format!("{name}_total"), "counter"),
        "info" => (format!("{name}_info"), "gauge"),
        "gauge" | "stateset" => (name.to_string(), "gauge"),
        "histogram" | "gaugehistogram" => (name.to_string(), "histogram"),
        "summary" => (name.to_string(), "summary"),
        _ => (name.to_string(), "untyped"),
    }
}

/// OpenMetrics escapes `"` in help text; the classic format does not.
fn classic_help(text: &str) -> String {
    text.replace("\\\"", "\"")
}

/// A sample line without its ` # {…} value` exemplar. Label values may hold
/// ` # `, so the search starts after the closing brace of the labels.
fn without_exemplar(line: &str) -> &str {
    let after_labels = match line.find([' ', '{']) {
        Some(open) if line[open..].starts_with('{') => {
            closing_brace(line, open).map_or(line.len(), |close| close + 1)
        }
        _ => 0,
    };
    match line[after_labels..].find(" # ") {
        Some(at) => &line[..after_labels + at],
        None => line,
    }
}

fn closing_brace(line: &str, open: usize) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in line[open..].char_indices() {
        match (quoted, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (_, false, '"') => quoted = !quoted,
            (false, _, '}') => return Some(open + i),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::metrics::info::Info;

    fn sample() -> Registry {
        let mut registry = registry("demo");
        let family = Family::<Vec<(String, String)>, Counter>::default();
        family
            .get_or_create(&vec![("listener".into(), "smtp # 1}".into())])
            .inc();
        registry.register("requests", "Requests served", family);
        registry.register("open", "Connections open", Gauge::<i64>::default());
        let histogram = Histogram::new([0.1, 1.0]);
        histogram.observe(0.5);
        registry.register("attempt_seconds", "Attempt duration", histogram);
        registry.register("build", "The build", Info::new(vec![("v", "1")]));
        registry
    }

    #[test]
    fn classic_names_counters_by_their_total_and_drops_openmetrics_lines() {
        let (kind, text) = encode(&sample(), None).unwrap();
        assert_eq!(kind, CLASSIC);
        assert!(text.contains("# HELP demo_requests_total Requests served.\n"));
        assert!(text.contains("# TYPE demo_requests_total counter\n"));
        assert!(text.contains("demo_requests_total{listener=\"smtp # 1}\"} 1\n"));
        assert!(text.contains("# TYPE demo_open gauge\n"));
        assert!(text.contains("# TYPE demo_attempt_seconds histogram\n"));
        assert!(text.contains("demo_attempt_seconds_bucket{le=\"+Inf\"} 1\n"));
        assert!(text.contains("# TYPE demo_build_info gauge\n"));
        assert!(!text.contains("# EOF"), "{text}");
    }

    #[test]
    fn openmetrics_when_the_scraper_prefers_it() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        let (kind, text) = encode(&sample(), Some(prometheus)).unwrap();
        assert_eq!(kind, OPENMETRICS);
        assert!(text.contains("# TYPE demo_requests counter\n"));
        assert!(text.ends_with("# EOF\n"));
        for classic in [
            "text/plain",
            "*/*",
            "",
            "text/plain;q=1, application/openmetrics-text;q=0.5",
        ] {
            assert!(!wants_openmetrics(classic), "{classic}");
        }
        assert!(!wants_openmetrics("application/openmetrics-text;q=0"));
        assert!(wants_openmetrics("Application/OpenMetrics-Text"));
    }

    #[test]
    fn label_sets_known_at_start_are_exported_at_zero() {
        let mut registry = registry("demo");
        let family = at_zero(
            Family::<Vec<(String, String)>, Counter>::default(),
            ["pass", "fail"].map(|r| vec![("result".to_string(), r.to_string())]),
        );
        family
            .get_or_create(&vec![("result".into(), "pass".into())])
            .inc();
        registry.register("rounds", "Rounds", family);
        let (_, text) = encode(&registry, None).unwrap();
        assert!(
            text.contains("demo_rounds_total{result=\"pass\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("demo_rounds_total{result=\"fail\"} 0\n"),
            "{text}"
        );
    }

    #[test]
    fn exemplars_are_cut_outside_the_labels_only() {
        assert_eq!(without_exemplar("a_total 1 # {t=\"x\"} 1"), "a_total 1");
        assert_eq!(
            without_exemplar("a_total{l=\"a # \\\"}\"} 2 # {t=\"x\"} 1"),
            "a_total{l=\"a # \\\"}\"} 2"
        );
        assert_eq!(without_exemplar("a{l=\"b\"} 3"), "a{l=\"b\"} 3");
    }
}
