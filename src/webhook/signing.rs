//! Standard Webhooks signing and verification (CONTRACT §5).
//!
//! Guarantees:
//! - [`WebhookSecret`] accepts only `whsec_` + standard base64 of a 24–64 byte key (the
//!   Standard Webhooks range); its `Debug` shows nothing of the key and the key bytes are
//!   zeroized on drop.
//! - [`sign`] produces `v1,` + base64(HMAC-SHA256(key, `{id}.{timestamp}.{body}`)), the
//!   exact value of the `webhook-signature` header; [`sign_all`] signs with every secret
//!   during a rotation, space-separated.
//! - [`verify`] accepts a message if *any* `v1` signature in the header matches *any* of
//!   the given secrets, compares in constant time (`hmac`'s `verify_slice`), ignores other
//!   signature versions, and refuses timestamps more than `tolerance` in the past or future
//!   (replay protection) before doing any HMAC work.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use rand::{CryptoRng, RngCore};
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use sha2::Sha256;
use thiserror::Error;

const PREFIX: &str = "whsec_";
const MIN_KEY: usize = 24;
const MAX_KEY: usize = 64;
/// More signatures than any rotation needs; bounds the work one request can cause.
const MAX_SIGNATURES: usize = 16;

/// The Standard Webhooks default replay window.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// Why a `whsec_` secret was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SecretError {
    #[error(
        "a webhook secret must start with \"whsec_\" followed by base64 (like whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD)"
    )]
    Prefix,
    #[error("the part after \"whsec_\" is not valid standard base64")]
    Base64,
    #[error("a webhook secret must decode to 24-64 bytes; this one has {0}")]
    Length(usize),
}

/// Why an incoming webhook was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VerifyError {
    #[error("no webhook secret configured to verify with")]
    NoSecrets,
    #[error("missing or empty webhook-id header")]
    MissingId,
    #[error("webhook-timestamp {0:?} is not a whole number of Unix seconds")]
    BadTimestamp(String),
    #[error(
        "webhook-timestamp is {age_secs} s old, beyond the {tolerance_secs} s tolerance (replayed or delayed message)"
    )]
    TooOld { age_secs: u64, tolerance_secs: u64 },
    #[error("webhook-timestamp is {ahead_secs} s in the future, beyond the {tolerance_secs} s tolerance (check the sender's clock)")]
    TooNew { ahead_secs: u64, tolerance_secs: u64 },
    #[error("webhook-signature has no v1 signature")]
    NoSignature,
    #[error("no v1 signature in webhook-signature matches any configured secret")]
    NoMatch,
}

/// A `whsec_` signing secret, keyed and ready to sign.
#[derive(Clone)]
pub struct WebhookSecret {
    key: SecretSlice<u8>,
    /// HMAC state after absorbing the key, cloned per message instead of re-keying.
    mac: Hmac<Sha256>,
}

impl WebhookSecret {
    pub fn parse(text: &str) -> Result<WebhookSecret, SecretError> {
        let b64 = text.trim().strip_prefix(PREFIX).ok_or(SecretError::Prefix)?;
        let key = STANDARD.decode(b64).map_err(|_| SecretError::Base64)?;
        WebhookSecret::from_key(key)
    }

    /// A fresh 32-byte secret.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> WebhookSecret {
        let mut key = vec![0u8; 32];
        rng.fill_bytes(&mut key);
        WebhookSecret { mac: keyed(&key), key: SecretSlice::from(key) }
    }

    fn from_key(key: Vec<u8>) -> Result<WebhookSecret, SecretError> {
        if !(MIN_KEY..=MAX_KEY).contains(&key.len()) {
            return Err(SecretError::Length(key.len()));
        }
        Ok(WebhookSecret { mac: keyed(&key), key: SecretSlice::from(key) })
    }

    /// The `whsec_...` form, for handing to the receiver once.
    pub fn to_whsec(&self) -> SecretString {
        SecretString::from(format!("{PREFIX}{}", STANDARD.encode(self.key.expose_secret())))
    }

    fn mac_of(&self, msg_id: &str, timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

/// HMAC-SHA256 keyed with `key` (at most 64 bytes). HMAC zero-pads a key shorter than the
/// 64-byte block (RFC 2104 §2); padding it here gives the same MAC through the infallible
/// block-sized constructor, so there is no error path to handle.
fn keyed(key: &[u8]) -> Hmac<Sha256> {
    let mut block = hmac::digest::Key::<Hmac<Sha256>>::default();
    let n = key.len().min(block.len());
    block[..n].copy_from_slice(&key[..n]);
    let mac = <Hmac<Sha256> as KeyInit>::new(&block);
    block.iter_mut().for_each(|b| *b = 0);
    mac
}

impl FromStr for WebhookSecret {
    type Err = SecretError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WebhookSecret::parse(s)
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(whsec_[redacted])")
    }
}

/// The `webhook-signature` value for one secret: `v1,<base64>`.
pub fn sign(secret: &WebhookSecret, msg_id: &str, timestamp_secs: i64, body: &[u8]) -> String {
    let tag = secret.mac_of(msg_id, &timestamp_secs.to_string(), body).finalize().into_bytes();
    format!("v1,{}", STANDARD.encode(tag))
}

/// The `webhook-signature` value during a rotation: one `v1,` entry per secret, space-separated.
pub fn sign_all(secrets: &[WebhookSecret], msg_id: &str, timestamp_secs: i64, body: &[u8]) -> String {
    secrets.iter().map(|s| sign(s, msg_id, timestamp_secs, body)).collect::<Vec<_>>().join(" ")
}

/// The three signature headers of a received message, as raw header values.
#[derive(Debug, Clone, Copy)]
pub struct SignatureHeaders<'a> {
    pub id: &'a str,
    pub timestamp: &'a str,
    pub signature: &'a str,
}

/// Verifies a received message (module docs). `now_secs` is the receiver's Unix time.
pub fn verify(
    secrets: &[WebhookSecret],
    headers: &SignatureHeaders<'_>,
    body: &[u8],
    now_secs: i64,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    if secrets.is_empty() {
        return Err(VerifyError::NoSecrets);
    }
    let id = headers.id.trim();
    if id.is_empty() {
        return Err(VerifyError::MissingId);
    }
    let ts_text = headers.timestamp.trim();
    let ts: i64 = ts_text.parse().map_err(|_| VerifyError::BadTimestamp(ts_text.chars().take(40).collect()))?;
    let tolerance_secs = tolerance.as_secs();
    let skew = i128::from(now_secs) - i128::from(ts);
    if skew > i128::from(tolerance_secs) {
        return Err(VerifyError::TooOld { age_secs: u64::try_from(skew).unwrap_or(u64::MAX), tolerance_secs });
    }
    if -skew > i128::from(tolerance_secs) {
        return Err(VerifyError::TooNew { ahead_secs: u64::try_from(-skew).unwrap_or(u64::MAX), tolerance_secs });
    }
    let mut tags = Vec::new();
    for entry in headers.signature.split_ascii_whitespace().take(MAX_SIGNATURES) {
        if let Some(b64) = entry.strip_prefix("v1,") {
            // An undecodable entry is simply not a match; others may still be.
            if let Ok(tag) = STANDARD.decode(b64) {
                tags.push(tag);
            } else {
                tags.push(Vec::new());
            }
        }
    }
    if tags.is_empty() {
        return Err(VerifyError::NoSignature);
    }
    for secret in secrets {
        let mac = secret.mac_of(id, ts_text, body);
        if tags.iter().any(|tag| mac.clone().verify_slice(tag).is_ok()) {
            return Ok(());
        }
    }
    Err(VerifyError::NoMatch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const TS: i64 = 1_649_367_553;
    const BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const SIG: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    fn secret() -> WebhookSecret {
        WebhookSecret::parse(SECRET).unwrap()
    }

    fn headers(sig: &str) -> SignatureHeaders<'_> {
        SignatureHeaders { id: ID, timestamp: "1649367553", signature: sig }
    }

    #[test]
    fn standard_webhooks_test_vector() {
        assert_eq!(sign(&secret(), ID, TS, BODY), SIG);
        assert_eq!(verify(&[secret()], &headers(SIG), BODY, TS, DEFAULT_TOLERANCE), Ok(()));
    }

    #[test]
    fn secrets() {
        let table: &[(&str, Result<(), SecretError>)] = &[
            (SECRET, Ok(())),
            (" whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\n", Ok(())),
            ("C2FVsBQIhrscChlQIMV+b5sSYspob7oD", Err(SecretError::Prefix)),
            ("whsk_C2FVsBQIhrscChlQIMV+b5sSYspob7oD", Err(SecretError::Prefix)),
            ("whsec_not base64!", Err(SecretError::Base64)),
            ("whsec_C2FVsBQIhrscChlQIMV-b5sSYspob7oD", Err(SecretError::Base64)), // url-safe alphabet
            ("whsec_", Err(SecretError::Length(0))),
            ("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAA", Err(SecretError::Length(21))),
        ];
        for (text, want) in table {
            assert_eq!(WebhookSecret::parse(text).map(|_| ()), *want, "{text:?}");
        }
        let long = format!("whsec_{}", STANDARD.encode([7u8; 65]));
        assert_eq!(WebhookSecret::parse(&long).map(|_| ()), Err(SecretError::Length(65)));
        let max = format!("whsec_{}", STANDARD.encode([7u8; 64]));
        assert!(WebhookSecret::parse(&max).is_ok());
        assert!(SecretError::Prefix.to_string().contains("whsec_"));
    }

    #[test]
    fn secrets_never_print() {
        let s = secret();
        let shown = format!("{s:?}");
        assert!(!shown.contains("C2FV") && shown.contains("redacted"), "{shown}");
        assert_eq!(s.to_whsec().expose_secret(), SECRET);
        let fresh = WebhookSecret::generate(&mut StdRng::seed_from_u64(1));
        let again = WebhookSecret::parse(fresh.to_whsec().expose_secret()).unwrap();
        assert_eq!(sign(&fresh, ID, TS, BODY), sign(&again, ID, TS, BODY));
    }

    #[test]
    fn verification_table() {
        let other = WebhookSecret::generate(&mut StdRng::seed_from_u64(2));
        let other_sig = sign(&other, ID, TS, BODY);
        let rotated = format!("{other_sig} {SIG}");
        let mixed = format!("v1a,xyz {SIG} v2,abc");
        let tol = DEFAULT_TOLERANCE;
        type Case<'a> = (&'a str, Vec<WebhookSecret>, SignatureHeaders<'a>, &'a [u8], i64, Result<(), VerifyError>);
        let cases: Vec<Case> = vec![
            ("good", vec![secret()], headers(SIG), BODY, TS, Ok(())),
            ("rotation: second signature matches", vec![secret()], headers(&rotated), BODY, TS, Ok(())),
            ("rotation: second secret matches", vec![other.clone(), secret()], headers(SIG), BODY, TS, Ok(())),
            ("other versions ignored", vec![secret()], headers(&mixed), BODY, TS, Ok(())),
            ("edge of tolerance, old", vec![secret()], headers(SIG), BODY, TS + 300, Ok(())),
            ("edge of tolerance, new", vec![secret()], headers(SIG), BODY, TS - 300, Ok(())),
            (
                "stale",
                vec![secret()],
                headers(SIG),
                BODY,
                TS + 301,
                Err(VerifyError::TooOld { age_secs: 301, tolerance_secs: 300 }),
            ),
            (
                "future",
                vec![secret()],
                headers(SIG),
                BODY,
                TS - 301,
                Err(VerifyError::TooNew { ahead_secs: 301, tolerance_secs: 300 }),
            ),
            ("body changed", vec![secret()], headers(SIG), b"{}", TS, Err(VerifyError::NoMatch)),
            ("wrong secret", vec![other.clone()], headers(SIG), BODY, TS, Err(VerifyError::NoMatch)),
            ("garbage signature", vec![secret()], headers("v1,!!!"), BODY, TS, Err(VerifyError::NoMatch)),
            ("truncated signature", vec![secret()], headers(&SIG[..20]), BODY, TS, Err(VerifyError::NoMatch)),
            ("no v1", vec![secret()], headers("v1a,abc"), BODY, TS, Err(VerifyError::NoSignature)),
            ("empty signature", vec![secret()], headers(""), BODY, TS, Err(VerifyError::NoSignature)),
            ("no secrets", vec![], headers(SIG), BODY, TS, Err(VerifyError::NoSecrets)),
            (
                "no id",
                vec![secret()],
                SignatureHeaders { id: " ", timestamp: "1649367553", signature: SIG },
                BODY,
                TS,
                Err(VerifyError::MissingId),
            ),
            (
                "other id",
                vec![secret()],
                SignatureHeaders { id: "msg_other", timestamp: "1649367553", signature: SIG },
                BODY,
                TS,
                Err(VerifyError::NoMatch),
            ),
            (
                "bad timestamp",
                vec![secret()],
                SignatureHeaders { id: ID, timestamp: "2022-04-07", signature: SIG },
                BODY,
                TS,
                Err(VerifyError::BadTimestamp("2022-04-07".into())),
            ),
        ];
        for (name, secrets, h, body, now, want) in cases {
            assert_eq!(verify(&secrets, &h, body, now, tol), want, "{name}");
        }
    }

    #[test]
    fn sign_all_is_verifiable_by_either_side_of_a_rotation() {
        let old = secret();
        let new = WebhookSecret::generate(&mut StdRng::seed_from_u64(3));
        let header = sign_all(&[old.clone(), new.clone()], ID, TS, BODY);
        assert_eq!(header.split(' ').count(), 2);
        for s in [old, new] {
            assert_eq!(verify(&[s], &headers(&header), BODY, TS, DEFAULT_TOLERANCE), Ok(()));
        }
    }
}
