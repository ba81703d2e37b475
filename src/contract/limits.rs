//! The numeric bounds of the contract (CONTRACT.md §1), in one place so validation and the
//! JSON Schema cannot drift apart.

/// Largest request body the service accepts (larger bodies are answered 413).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// At most this many trigger conditions per payload.
pub const MAX_CONDITIONS: usize = 5;
/// Threshold bounds (inclusive) for every condition type.
pub const THRESHOLD_MIN: f64 = 0.0;
pub const THRESHOLD_MAX: f64 = 1.0;
/// Sentiment threshold when the payload leaves it out.
pub const DEFAULT_SENTIMENT_THRESHOLD: f64 = 0.5;
/// A keyword phrase is non-blank and at most this many characters.
pub const KEYWORD_MAX_CHARS: usize = 100;
/// Duration conditions count whole seconds in this range (inclusive): up to one day.
pub const DURATION_MIN_SECS: u32 = 1;
pub const DURATION_MAX_SECS: u32 = 86_400;
/// The only `value` a confidence condition takes: it reads the transcript's ASR confidence.
pub const CONFIDENCE_VALUE: &str = "transcript";

/// `displaySettings.delayMs` bounds (inclusive).
pub const DELAY_MS_MIN: u64 = 500;
pub const DELAY_MS_MAX: u64 = 5_000;
/// `displaySettings.maxConcurrentPrompts` bounds (inclusive).
pub const MAX_CONCURRENT_MIN: u8 = 1;
pub const MAX_CONCURRENT_MAX: u8 = 3;
/// `displaySettings.autoDismissMs` bounds (inclusive).
pub const AUTO_DISMISS_MS_MIN: u64 = 10_000;
pub const AUTO_DISMISS_MS_MAX: u64 = 60_000;

/// `queueTimeoutMs`: default and bounds (inclusive).
pub const QUEUE_TIMEOUT_MS_DEFAULT: u64 = 120_000;
pub const QUEUE_TIMEOUT_MS_MIN: u64 = 0;
pub const QUEUE_TIMEOUT_MS_MAX: u64 = 600_000;

/// URLs (webhook, prompt links) longer than this are refused: browsers and proxies start
/// truncating around here, and no real knowledge-base link needs more.
pub const URL_MAX_CHARS: usize = 2_048;

/// `contextData`: serialized size and nesting depth. The object itself is depth 1; each
/// nested object or array adds one.
pub const CONTEXT_MAX_BYTES: usize = 16 * 1024;
pub const CONTEXT_MAX_DEPTH: usize = 8;

/// Inline and catalogue prompt content, counted in Unicode characters.
pub const TITLE_MAX_CHARS: usize = 80;
pub const BODY_MAX_CHARS: usize = 600;

/// Catalogue entry extras.
pub const NAME_MAX_CHARS: usize = 100;
pub const TAG_MAX_CHARS: usize = 50;
pub const MAX_TAGS: usize = 20;

/// The exact wording of the two UI constraints (CONTRACT.md §1).
pub const MSG_MAX_CONCURRENT: &str = "UI rendering constraint violated: at most 3 prompts may be shown at once";
pub const MSG_DELAY: &str = "display timing violated: the delay must be at least 500 ms so the panel does not flicker";
