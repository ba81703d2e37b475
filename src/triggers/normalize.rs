//! Text normalization shared by keyword phrases and utterances, so both sides compare alike.
//!
//! What [`normalize`] does, in order (CONTRACT.md §3: whole words, case- and accent-insensitive):
//!
//! 1. **NFKD**: compatibility decomposition, so ligatures, full-width forms and precomposed
//!    letters split into base letter + combining marks ("ﬁ" → "fi", "É" → "E" + U+0301).
//! 2. **Full case folding** (Unicode `CaseFolding.txt`, C + F entries, via `caseless`): folding,
//!    not lower-casing, so "ß" and "SS" both become "ss" and final sigma matches sigma.
//!    Folding can emit precomposed characters, so the result is decomposed (NFKD) again.
//! 3. **Combining marks dropped** (General_Category = Mark): this is what makes matching
//!    accent-insensitive ("RÉFUND" = "refund", "Café" = "cafe"). For scripts whose vowel signs
//!    are marks (Devanagari, Thai, …) those signs are dropped too; phrases and utterances lose
//!    them identically, so matching stays consistent, at the price of rare extra matches.
//! 4. **NFKC recomposition** of what is left (re-joins Hangul jamo and the like).
//! 5. Every character that is not alphanumeric (punctuation, symbols, emoji, `_`, whitespace)
//!    becomes a separator; runs of separators collapse to one ASCII space, none at either end.
//!    So "refund!" → "refund" but "re-fund" → "re fund", and word boundaries are exactly the
//!    spaces and the two ends of the text.
//!
//! Speed: ASCII (the common case for transcripts) takes a one-pass fast path that gives the
//! same result as the full pipeline: for ASCII, NFKD/NFKC are the identity, folding is
//! lower-casing and there are no marks. Mixed text is cut into ASCII and non-ASCII runs and
//! only the non-ASCII runs go through the Unicode pipeline. That is equivalent because
//! nothing crosses an ASCII character: NFKD reorders only combining marks, case folding is
//! context-free, and no canonical composition joins an ASCII character with a following
//! non-mark (marks are dropped anyway). A test checks the equivalence on mixed samples.

use caseless::Caseless;
use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

/// Normalizes `text` into a fresh `String`. For hot paths use [`Normalizer`], which reuses
/// its buffers.
pub fn normalize(text: &str) -> String {
    let mut n = Normalizer::default();
    n.normalize(text).to_owned()
}

/// Reusable normalization buffers: after warm-up, normalizing allocates nothing.
#[derive(Debug, Default, Clone)]
pub struct Normalizer {
    out: String,
    tmp: String,
}

impl Normalizer {
    pub fn new() -> Normalizer {
        Normalizer::default()
    }

    /// Normalizes `text` (see the module docs) into the internal buffer and borrows it.
    pub fn normalize(&mut self, text: &str) -> &str {
        let out = &mut self.out;
        out.clear();
        out.reserve(text.len());
        let bytes = text.as_bytes();
        let mut pending_space = false;
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            if b.is_ascii() {
                // The ASCII fast path, one table lookup per byte: the case-folded byte, or 0
                // for a separator. Transcripts are almost all ASCII and this loop is about a
                // third of evaluating an utterance.
                match ASCII_FOLD[usize::from(b)] {
                    0 => pending_space = true,
                    folded => {
                        if pending_space && !out.is_empty() {
                            out.push(' ');
                        }
                        pending_space = false;
                        out.push(char::from(folded));
                    }
                }
                i += 1;
                continue;
            }
            // A non-ASCII run, up to the next ASCII character, through the Unicode pipeline.
            // `i` is on a char boundary: only whole ASCII bytes and whole runs were consumed.
            let Some(tail) = text.get(i..) else { break };
            let run = tail.char_indices().find(|(_, c)| c.is_ascii()).map_or(tail.len(), |(j, _)| j);
            self.tmp.clear();
            self.tmp.extend(unicode_fold(&tail[..run]));
            push_words(out, &mut pending_space, self.tmp.nfkc());
            i += run;
        }
        &self.out
    }
}

/// For each ASCII byte: its lower-case form if it is a letter or digit, else 0 (a separator).
static ASCII_FOLD: [u8; 128] = {
    let mut table = [0u8; 128];
    let mut b = 0;
    while b < 128 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() {
            table[b] = c.to_ascii_lowercase();
        }
        b += 1;
    }
    table
};

/// Steps 1-3 of the module docs: NFKD, full case fold, NFKD again, marks dropped.
fn unicode_fold(text: &str) -> impl Iterator<Item = char> + '_ {
    text.nfkd().default_case_fold().nfkd().filter(|c| !is_combining_mark(*c))
}

/// Appends the alphanumeric runs of `chars` to `out`, separated by single spaces;
/// `pending_space` carries a separator seen at the end of one call into the next.
fn push_words(out: &mut String, pending_space: &mut bool, chars: impl Iterator<Item = char>) {
    for c in chars {
        if c.is_alphanumeric() {
            if *pending_space && !out.is_empty() {
                out.push(' ');
            }
            *pending_space = false;
            out.push(c);
        } else {
            *pending_space = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases: &[(&str, &str)] = &[
            ("", ""),
            ("   ", ""),
            ("Refund", "refund"),
            ("RÉFUND", "refund"),
            ("réfund", "refund"),
            ("Café", "cafe"),
            // Decomposed input (e + U+0301) ends up the same as precomposed.
            ("Cafe\u{301}", "cafe"),
            ("refund!", "refund"),
            ("re-fund", "re fund"),
            ("  I want   a REFUND,  now!! ", "i want a refund now"),
            ("don't", "don t"),
            ("Straße", "strasse"),
            ("STRASSE", "strasse"),
            ("ΣΊΣΥΦΟΣ", "σισυφοσ"),
            ("ﬁle", "file"),
            ("ＲＥＦＵＮＤ", "refund"),
            ("İstanbul", "istanbul"),
            ("Zoë Müller-Øster", "zoe muller øster"),
            ("tab\tand\nnewline", "tab and newline"),
            ("snake_case", "snake case"),
            ("price: $100.50", "price 100 50"),
            ("refund 🙂 please", "refund please"),
            ("한국어", "한국어"),
        ];
        let mut n = Normalizer::new();
        for (input, want) in cases {
            assert_eq!(n.normalize(input), *want, "input {input:?}");
            assert_eq!(normalize(input), *want, "input {input:?}");
        }
    }

    /// The whole pipeline applied to the whole text, with no fast paths.
    fn reference(text: &str) -> String {
        let mut out = String::new();
        let folded: String = unicode_fold(text).collect();
        push_words(&mut out, &mut false, folded.nfkc());
        out
    }

    #[test]
    fn fast_paths_agree_with_the_full_pipeline() {
        let samples = [
            "Hello, World!",
            "re-fund 42 x_y",
            "  MiXeD   case ",
            "a.b,c;d",
            "Cafe\u{301} au lait",
            "e\u{301}\u{327}x",
            "<\u{338} =\u{338}",
            "Zoë Müller-Øster, Straße 12",
            "ＲＥＦＵＮＤ please ﬁx",
            "\u{1100}\u{1161}\u{11A8} 한국어 mixed",
            "ΣΊΣΥΦΟΣ and ς",
            "İstanbul ǰ ŉ ﬀ",
            "refund🙂please",
            "à-la-carte façade naïve coöperate",
            "\u{301}leading mark",
        ];
        let mut n = Normalizer::new();
        for text in samples {
            assert_eq!(n.normalize(text), reference(text), "input {text:?}");
        }
    }

    #[test]
    fn idempotent() {
        for text in ["RÉFUND!!", "Straße 12", "Zoë  Müller", "ﬁ ＡＢ"] {
            let once = normalize(text);
            assert_eq!(normalize(&once), once, "input {text:?}");
        }
    }
}
