//! What a served certificate says about itself (serial and validity) for
//! `/status`, and the watch that turns `/ready` to degraded when one is
//! about to expire.
//!
//! The X.509 fields are read with a small DER walker over the fields before
//! the subject (RFC 5280 section 4.1): every length is checked against what
//! is left, so a malformed file is an error, never a panic.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::admin::Readiness;
use crate::live::Live;

/// `/ready` says degraded when a certificate expires within this many days.
pub const EXPIRY_WARNING_DAYS: i64 = 14;
/// How often the watch looks again without a reload.
const CHECK_EVERY: Duration = Duration::from_secs(60);
/// The readiness concern of the watch.
const CONCERN: &str = "certificates";

/// A certificate a daemon serves: the file, its serial and validity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    pub file: PathBuf,
    /// The serial number, lowercase hex.
    pub serial: String,
    /// Seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
}

/// A certificate as `/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CertificateStatus {
    pub file: String,
    pub serial: String,
    /// RFC 3339, UTC.
    pub not_before: String,
    pub not_after: String,
    /// Whole days until `not_after` (negative once expired).
    pub days_left: i64,
    /// Within [`EXPIRY_WARNING_DAYS`] of `not_after`, or past it.
    pub expires_soon: bool,
}

impl CertificateInfo {
    /// The first certificate of a chain (the leaf) in DER; `file` names it
    /// in errors and in `/status`.
    pub fn from_der(file: &Path, der: &[u8]) -> Result<CertificateInfo, String> {
        parse(der)
            .map(|(serial, not_before, not_after)| CertificateInfo {
                file: file.to_path_buf(),
                serial,
                not_before,
                not_after,
            })
            .map_err(|e| format!("cannot read the certificate in {}: {e}", file.display()))
    }

    /// The first certificate of the PEM file at `path` (the leaf).
    pub fn from_pem_file(path: &Path) -> Result<CertificateInfo, String> {
        use rustls_pki_types::pem::PemObject;
        let first = rustls_pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            .next()
            .ok_or_else(|| format!("{} holds no PEM certificate", path.display()))?
            .map_err(|e| format!("cannot read PEM certificates from {}: {e}", path.display()))?;
        CertificateInfo::from_der(path, &first)
    }

    /// How long the certificate is valid in all.
    pub fn lifetime(&self) -> Duration {
        Duration::from_secs((self.not_after - self.not_before).max(0) as u64)
    }

    /// Seconds from `now` (Unix seconds) until expiry; negative once expired.
    pub fn seconds_left(&self, now: i64) -> i64 {
        self.not_after - now
    }

    pub fn status(&self, now: i64) -> CertificateStatus {
        let left = self.seconds_left(now);
        CertificateStatus {
            file: self.file.display().to_string(),
            serial: self.serial.clone(),
            not_before: rfc3339(self.not_before),
            not_after: rfc3339(self.not_after),
            days_left: left.div_euclid(86_400),
            expires_soon: left < EXPIRY_WARNING_DAYS * 86_400,
        }
    }

    /// Why this certificate degrades the daemon at `now`, if it does.
    pub fn warning(&self, now: i64) -> Option<String> {
        let status = self.status(now);
        if !status.expires_soon {
            return None;
        }
        Some(if status.days_left < 0 {
            format!(
                "certificate {} (serial {}) expired at {}",
                status.file, status.serial, status.not_after
            )
        } else {
            format!(
                "certificate {} (serial {}) expires in {} days, at {}",
                status.file, status.serial, status.days_left, status.not_after
            )
        })
    }
}

/// Now, in Unix seconds.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn rfc3339(secs: i64) -> String {
    let time = if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    };
    humantime::format_rfc3339_seconds(time).to_string()
}

/// Keeps the `certificates` concern of `readiness` degraded while any of
/// the certificates in service expires within [`EXPIRY_WARNING_DAYS`]:
/// checked at start, after every reload and every minute, until `shutdown`.
pub async fn watch_expiry<S: Send + Sync + 'static>(
    live: Arc<Live<S>>,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
    certificates: impl Fn(&S) -> Vec<CertificateInfo> + Send,
) {
    let mut reloads = live.subscribe();
    loop {
        let now = now();
        let warnings: Vec<String> = certificates(&live.get())
            .iter()
            .filter_map(|c| c.warning(now))
            .collect();
        if warnings.is_empty() {
            readiness.not_degraded(CONCERN);
        } else {
            readiness.degraded(CONCERN, warnings.join("; "));
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = reloads.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
    }
}

/// One DER element: its tag, its contents and what follows it.
fn element(input: &[u8]) -> Result<(u8, &[u8], &[u8]), &'static str> {
    let (&tag, rest) = input.split_first().ok_or("truncated DER")?;
    if tag & 0x1f == 0x1f {
        return Err("a multi-byte DER tag where none belongs");
    }
    let (&first, rest) = rest.split_first().ok_or("truncated DER length")?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return Err("a DER length that is indefinite, too long or truncated");
        }
        let length = rest[..count]
            .iter()
            .fold(0usize, |n, &b| (n << 8) | usize::from(b));
        (length, &rest[count..])
    };
    if length > rest.len() {
        return Err("a DER length beyond the end of the data");
    }
    Ok((tag, &rest[..length], &rest[length..]))
}

/// The element with `tag`, and what follows it.
fn expect<'a>(
    input: &'a [u8],
    tag: u8,
    what: &'static str,
) -> Result<(&'a [u8], &'a [u8]), &'static str> {
    match element(input)? {
        (found, contents, rest) if found == tag => Ok((contents, rest)),
        _ => Err(what),
    }
}

/// Serial (hex), notBefore and notAfter of a DER certificate.
fn parse(der: &[u8]) -> Result<(String, i64, i64), &'static str> {
    let (certificate, _) = expect(der, 0x30, "not a DER certificate (no outer SEQUENCE)")?;
    let (tbs, _) = expect(certificate, 0x30, "no tbsCertificate SEQUENCE")?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = element(rest)?.2; // [0] version
    }
    let (serial, rest) = expect(rest, 0x02, "no serial number INTEGER")?;
    let (_, rest) = expect(rest, 0x30, "no signature algorithm SEQUENCE")?;
    let (_, rest) = expect(rest, 0x30, "no issuer SEQUENCE")?;
    let (validity, _) = expect(rest, 0x30, "no validity SEQUENCE")?;
    let (tag, not_before, rest) = element(validity)?;
    let not_before = time(tag, not_before)?;
    let (tag, not_after, _) = element(rest)?;
    let not_after = time(tag, not_after)?;
    // Without the sign octet, as openssl prints it.
    let serial = match serial {
        [0, rest @ ..] if !rest.is_empty() => rest,
        _ => serial,
    };
    Ok((hex::encode(serial), not_before, not_after))
}

/// A UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) in
/// Unix seconds.
fn time(tag: u8, text: &[u8]) -> Result<i64, &'static str> {
    let digits = |range: std::ops::Range<usize>| -> Result<i64, &'static str> {
        let part = text.get(range).ok_or("a validity time too short")?;
        part.iter().try_fold(0i64, |n, &b| match b {
            b'0'..=b'9' => Ok(n * 10 + i64::from(b - b'0')),
            _ => Err("a validity time with a non-digit"),
        })
    };
    let (year, at) = match (tag, text.len()) {
        (0x17, 13) => {
            let yy = digits(0..2)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
        }
        (0x18, 15) => (digits(0..4)?, 4),
        _ => return Err("a validity time that is neither UTCTime nor GeneralizedTime in UTC"),
    };
    if text.last() != Some(&b'Z') {
        return Err("a validity time not in UTC (no Z)");
    }
    let (month, day) = (digits(at..at + 2)?, digits(at + 2..at + 4)?);
    let (hour, minute, second) = (
        digits(at + 4..at + 6)?,
        digits(at + 6..at + 8)?,
        digits(at + 8..at + 10)?,
    );
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err("a validity time out of range");
    }
    Ok(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_match_known_unix_times() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(time(0x17, b"000301000000Z"), Ok(951_868_800));
        assert_eq!(time(0x18, b"20380119031408Z"), Ok(2_147_483_648));
        assert_eq!(time(0x17, b"750101000000Z"), Ok(157_766_400));
    }

    #[test]
    fn malformed_times_are_errors() {
        for (tag, text) in [
            (0x17, &b"0003010000Z"[..]),
            (0x17, b"000301000000+"),
            (0x18, b"2000130100000Z0"),
            (0x17, b"00a301000000Z"),
            (0x17, b"001301000000Z"),
            (0x04, b"000301000000Z"),
        ] {
            assert!(time(tag, text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn malformed_der_is_an_error_not_a_panic() {
        let file = Path::new("x.pem");
        let mut inputs: Vec<Vec<u8>> = vec![
            vec![],
            vec![0x30],
            vec![0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            vec![0x30, 0x80, 0, 0],
            vec![0x30, 0x89, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            vec![0x1f, 0x01, 0],
            vec![0x30, 0x03, 0x30, 0x01, 0x02],
            b"-----BEGIN CERTIFICATE-----".to_vec(),
        ];
        // Every prefix of a well-formed-looking header.
        let header = [
            0x30, 0x0a, 0x30, 0x08, 0xa0, 0x03, 0x02, 0x01, 0x02, 0x02, 0x01, 0x01,
        ];
        inputs.extend((0..header.len()).map(|n| header[..n].to_vec()));
        for input in inputs {
            assert!(
                CertificateInfo::from_der(file, &input).is_err(),
                "{input:?}"
            );
        }
    }

    #[test]
    fn status_counts_whole_days_and_warns_within_fourteen() {
        let info = CertificateInfo {
            file: "c.pem".into(),
            serial: "01".into(),
            not_before: 0,
            not_after: 100 * 86_400,
        };
        let status = info.status(86 * 86_400 - 1);
        assert_eq!((status.days_left, status.expires_soon), (14, false));
        assert!(info.warning(86 * 86_400 - 1).is_none());
        let soon = info.status(86 * 86_400 + 1);
        assert_eq!((soon.days_left, soon.expires_soon), (13, true));
        assert!(info
            .warning(95 * 86_400)
            .unwrap()
            .contains("expires in 5 days"));
        assert!(info.warning(101 * 86_400).unwrap().contains("expired at"));
        assert_eq!(status.not_after, "1970-04-11T00:00:00Z");
    }
}
