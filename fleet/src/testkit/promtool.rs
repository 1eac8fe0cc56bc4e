//! `promtool check metrics` (Debian's `prometheus` package) over a daemon's
//! `/metrics`: the exposition a Prometheus server scrapes must pass it.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;

/// Pipes `exposition` (classic Prometheus text) through `promtool check
/// metrics`; any complaint, or a failed exit, is an error quoting it.
pub fn check_metrics(exposition: &str) -> anyhow::Result<()> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start `promtool` (install the Debian package `prometheus`)")?;
    child
        .stdin
        .take()
        .context("promtool: no stdin")?
        .write_all(exposition.as_bytes())
        .context("promtool: writing the exposition")?;
    let out = child.wait_with_output().context("promtool: waiting")?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics ({}) said:\n{said}\nof:\n{exposition}",
        out.status
    );
    Ok(())
}

/// What Prometheus sends as `Accept` when it scrapes.
pub const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// GETs `url` with `accept` (none when `None`); the content type and body.
pub async fn scrape(url: &str, accept: Option<&str>) -> anyhow::Result<(String, String)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut request = client.get(url);
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().await.with_context(|| format!("GET {url}"))?;
    anyhow::ensure!(response.status() == 200, "GET {url}: {}", response.status());
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    Ok((content_type, response.text().await?))
}

/// A daemon's `/metrics` at `url`: the classic answer passes promtool and
/// names every family `<prefix>_…`; Prometheus's `Accept` gets OpenMetrics.
pub async fn check_daemon_metrics(url: &str, prefix: &str) -> anyhow::Result<()> {
    let (content_type, classic) = scrape(url, None).await?;
    anyhow::ensure!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{url} without Accept answered {content_type}"
    );
    check_metrics(&classic)?;
    let families: Vec<&str> = classic
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split(' ').next())
        .collect();
    anyhow::ensure!(!families.is_empty(), "{url} has no metric families");
    let foreign: Vec<&&str> = families
        .iter()
        .filter(|name| !name.starts_with(&format!("{prefix}_")))
        .collect();
    anyhow::ensure!(
        foreign.is_empty(),
        "families without `{prefix}_`: {foreign:?}"
    );
    let (content_type, openmetrics) = scrape(url, Some(PROMETHEUS_ACCEPT)).await?;
    anyhow::ensure!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{url} for Prometheus answered {content_type}"
    );
    anyhow::ensure!(openmetrics.ends_with("# EOF\n"), "no # EOF:\n{openmetrics}");
    Ok(())
}

/// The value of `series` (a name with its labels as written, e.g.
/// `mta_ingress_messages_total{listener="smtp:10587"}`) in an exposition.
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.split(' ').next()?.parse().ok())
}

/// [`sample`] of `series` in what `url` (a `/metrics`) answers now.
pub async fn scrape_sample(url: &str, series: &str) -> Option<f64> {
    let (_, body) = scrape(url, None).await.ok()?;
    sample(&body, series)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_finds_the_exact_series_only() {
        let text =
            "# TYPE a_total counter\na_total{l=\"x\"} 3\na_total_other 4\na_total 5 1700000000\n";
        assert_eq!(sample(text, "a_total{l=\"x\"}"), Some(3.0));
        assert_eq!(sample(text, "a_total"), Some(5.0));
        assert_eq!(sample(text, "a_total{l=\"y\"}"), None);
        assert_eq!(sample(text, "a"), None);
    }

    #[test]
    fn promtool_flags_an_openmetrics_counter_and_passes_the_classic_one() {
        let openmetrics = "# HELP x_a Requests.\n# TYPE x_a counter\nx_a_total 1\n# EOF\n";
        assert!(check_metrics(openmetrics).is_err());
        let classic = crate::metrics::to_classic(openmetrics);
        check_metrics(&classic).unwrap();
    }
}
