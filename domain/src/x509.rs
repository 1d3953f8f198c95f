//! Just enough of X.509 (RFC 5280) to say when certificates expire: the PEM blocks of a text,
//! and the `notAfter` of a certificate's validity, read from its DER. Nothing is verified; this
//! is what an expiry alert needs to know, not what a TLS handshake trusts.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chrono::{DateTime, NaiveDate, Utc};

/// The certificates of a text: the DER of each `CERTIFICATE` PEM block, in order. Text that is
/// not PEM yields none.
#[must_use]
pub fn pem_certificates(text: &str) -> Vec<Vec<u8>> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let body = &rest[start + BEGIN.len()..];
        let Some(stop) = body.find(END) else { break };
        let encoded: String = body[..stop]
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        if let Ok(der) = STANDARD.decode(encoded) {
            found.push(der);
        }
        rest = &body[stop + END.len()..];
    }
    found
}

/// One DER element: its tag and contents, and what follows it.
fn element(input: &[u8]) -> Result<(u8, &[u8], &[u8]), String> {
    let (&tag, rest) = input.split_first().ok_or("the DER ends early")?;
    let (&first, rest) = rest.split_first().ok_or("the DER ends early")?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return Err("a DER length is malformed".to_owned());
        }
        let length = rest[..count]
            .iter()
            .fold(0usize, |length, byte| (length << 8) | usize::from(*byte));
        (length, &rest[count..])
    };
    if rest.len() < length {
        return Err("a DER element runs past its end".to_owned());
    }
    Ok((tag, &rest[..length], &rest[length..]))
}

/// The contents of a SEQUENCE.
fn sequence(input: &[u8]) -> Result<(&[u8], &[u8]), String> {
    match element(input)? {
        (0x30, contents, rest) => Ok((contents, rest)),
        (tag, ..) => Err(format!("expected a SEQUENCE, found tag {tag:#04x}")),
    }
}

/// When the certificate whose DER is `der` stops being valid (its `notAfter`).
pub fn not_after(der: &[u8]) -> Result<DateTime<Utc>, String> {
    let (certificate, _) = sequence(der)?;
    let (mut tbs, _) = sequence(certificate)?;
    // [0] EXPLICIT version, when present.
    if tbs.first() == Some(&0xa0) {
        tbs = element(tbs)?.2;
    }
    let (_serial, _, rest) = element(tbs)?;
    let (_signature, rest) = sequence(rest)?;
    let (_issuer, rest) = sequence(rest)?;
    let (validity, _) = sequence(rest)?;
    let (_, _, after_not_before) = element(validity)?;
    let (tag, time, _) = element(after_not_before)?;
    time_of(tag, time)
}

/// A UTCTime (`YYMMDDHHMMSSZ`, years 1950 to 2049) or a GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn time_of(tag: u8, bytes: &[u8]) -> Result<DateTime<Utc>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "a time is not text".to_owned())?;
    let digits = text
        .strip_suffix('Z')
        .filter(|digits| digits.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| format!("the time `{text}` is not in UTC"))?;
    let number = |range: std::ops::Range<usize>| -> Result<u32, String> {
        digits
            .get(range)
            .and_then(|part| part.parse().ok())
            .ok_or_else(|| format!("the time `{text}` is malformed"))
    };
    let (year, rest) = match (tag, digits.len()) {
        (0x17, 12) => {
            let short = number(0..2)?;
            (
                if short >= 50 {
                    1900 + short
                } else {
                    2000 + short
                },
                2,
            )
        }
        (0x18, 14) => (number(0..4)?, 4),
        _ => {
            return Err(format!(
                "the time `{text}` is neither UTCTime nor GeneralizedTime"
            ))
        }
    };
    let field = |index: usize| number(rest + 2 * index..rest + 2 * index + 2);
    let (month, day, hour, minute, second) =
        (field(0)?, field(1)?, field(2)?, field(3)?, field(4)?);
    let year = i32::try_from(year).map_err(|_| "a year is out of range".to_owned())?;
    let date = NaiveDate::from_ymd_opt(year, month, day)
        .and_then(|date| date.and_hms_opt(hour, minute, second))
        .ok_or_else(|| format!("the time `{text}` is not a date"))?;
    Ok(date.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made with `openssl req -x509 -days 3650`: valid until 2036-11-29 17:20:46 (UTCTime).
    const TEN_YEARS: &str = "-----BEGIN CERTIFICATE-----
MIIBfTCCASOgAwIBAgIUOtDEw/VGdU8ErD45vlVjAMIdKl4wCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJZWZtcy10ZXN0MB4XDTI2MTIwMjE3MjA0NloXDTM2MTEyOTE3
MjA0NlowFDESMBAGA1UEAwwJZWZtcy10ZXN0MFkwEwYHKoZIzj0CAQYIKoZIzj0D
AQcDQgAE4aPK8o2sKReSc1Nh5R3WNuGZZkq8aI+oUtiRXWqe3ikm+SymaNsZnlWo
C3EH8Q8re8vrVhek33V7gjPGX7W8+qNTMFEwHQYDVR0OBBYEFOKzl0GwhkIWPHnJ
5/2KoM9N4F29MB8GA1UdIwQYMBaAFOKzl0GwhkIWPHnJ5/2KoM9N4F29MA8GA1Ud
EwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIgVjBkrTfd70Jl2oHp0rMgSEsy
NydrLNXfo5c5WF1zbYECIQD0eKHnl82qv3KbURoWJlJpUwG/x3mOYdibVdN8OvvK
pA==
-----END CERTIFICATE-----
";

    /// Made with `openssl req -x509 -days 10000`: valid until 2054-04-19 17:20:48
    /// (GeneralizedTime, as years from 2050 are written).
    const PAST_2050: &str = "-----BEGIN CERTIFICATE-----
MIIBgDCCASWgAwIBAgIUc5E5FHmsPlssAQ56jb/mtP4je/swCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJZWZtcy1sb25nMCAXDTI2MTIwMjE3MjA0OFoYDzIwNTQwNDE5
MTcyMDQ4WjAUMRIwEAYDVQQDDAllZm1zLWxvbmcwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAATDQuY+Sn9whNQyI51Cj3A0h5KP9u0A+AzRmOFKhAF5O44rbkFBJC/a
ExDMfFQXsY+DMBdfAlIXlx4MFokUyylio1MwUTAdBgNVHQ4EFgQUNIracqXL9w2V
QDMK1vMSGlwN5NYwHwYDVR0jBBgwFoAUNIracqXL9w2VQDMK1vMSGlwN5NYwDwYD
VR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNJADBGAiEA5TdbFVcRGcoTvZMe6hnb
055XDiUcTy0ljTzspLSntLwCIQDIsYOOn4XYPx8thWiXD583P9bqOwE79smpd19u
TbZvSg==
-----END CERTIFICATE-----
";

    #[test]
    fn the_end_of_validity_is_read_as_openssl_prints_it() {
        let chain = format!("{TEN_YEARS}\n{PAST_2050}");
        let ends: Vec<String> = pem_certificates(&chain)
            .iter()
            .map(|der| not_after(der).unwrap().to_rfc3339())
            .collect();
        assert_eq!(
            ends,
            ["2036-11-29T17:20:46+00:00", "2054-04-19T17:20:48+00:00"]
        );
    }

    #[test]
    fn what_is_not_a_certificate_is_named_never_a_panic() {
        assert!(pem_certificates("no pem here").is_empty());
        let der = &pem_certificates(TEN_YEARS)[0];
        for cut in [0, 1, 2, 10, 40, 100] {
            assert!(not_after(&der[..cut]).is_err(), "cut at {cut}");
        }
        assert!(not_after(&[0x02, 0x01, 0x00])
            .unwrap_err()
            .contains("SEQUENCE"));
        assert!(time_of(0x17, b"361129172046").is_err());
        assert!(time_of(0x17, b"361329172046Z").is_err());
    }
}
