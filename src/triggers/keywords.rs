//! The keyword index: every trigger phrase in one Aho-Corasick automaton, matched as whole words.
//!
//! Phrases are normalized exactly like utterances ([`super::normalize`]), deduplicated, and
//! compiled into a single automaton, so one pass over an utterance finds every phrase in it
//! no matter how many rules exist. Matching is *overlapping* (standard semantics): "refund" and
//! "refund request" both match "i want a refund request", which leftmost-longest would hide.
//! Whole words: a match counts only if it starts at the beginning of the text or after a space
//! and ends at the end of the text or before a space; normalized text has single spaces
//! between words and phrases never start or end with one.
//!
//! The search steps the automaton's DFA byte by byte itself instead of going through the
//! crate's overlapping iterator: a whole-word match can only end where a word ends, so the
//! state's matches are read at the spaces and at the end of the text, and nowhere else. That
//! skips the iterator's per-byte match bookkeeping and per-match resumption, which cost as
//! much as the transitions themselves on utterance-sized texts.

use std::collections::HashMap;

use aho_corasick::automaton::{Automaton, StateID};
use aho_corasick::dfa::DFA;
use aho_corasick::{Anchored, MatchKind, StartKind};

use super::normalize::Normalizer;
use super::TriggerError;

/// A phrase's index in its [`KeywordIndex`]; equal normalized phrases share one id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PhraseId(pub u32);

/// Collects phrases before the automaton is built.
#[derive(Debug, Default)]
pub struct KeywordIndexBuilder {
    phrases: Vec<String>,
    by_text: HashMap<String, PhraseId>,
    normalizer: Normalizer,
}

impl KeywordIndexBuilder {
    pub fn new() -> KeywordIndexBuilder {
        KeywordIndexBuilder::default()
    }

    /// A builder that starts with every phrase of `index`, in id order, so each keeps its
    /// [`PhraseId`] in the index this builder makes: phrases added now get new, higher ids.
    /// This is how a live service grows its index (a rules reload, an API arm with a new
    /// phrase) without invalidating what conversations already heard.
    pub fn extending(index: &KeywordIndex) -> KeywordIndexBuilder {
        KeywordIndexBuilder {
            phrases: index.phrases.clone(),
            by_text: index.by_text.clone(),
            normalizer: Normalizer::new(),
        }
    }

    /// Adds a phrase (raw, as a rule or payload wrote it) and returns its id. A phrase equal
    /// to an earlier one after normalization gets the earlier id.
    pub fn add(&mut self, phrase: &str) -> Result<PhraseId, TriggerError> {
        let norm = self.normalizer.normalize(phrase);
        if norm.is_empty() {
            return Err(TriggerError::EmptyPhrase { phrase: phrase.to_owned() });
        }
        if let Some(id) = self.by_text.get(norm) {
            return Ok(*id);
        }
        let id = u32::try_from(self.phrases.len()).map(PhraseId).map_err(|_| TriggerError::TooManyPhrases)?;
        self.phrases.push(norm.to_owned());
        self.by_text.insert(norm.to_owned(), id);
        Ok(id)
    }

    /// Compiles the automaton.
    pub fn build(self) -> Result<KeywordIndex, TriggerError> {
        // A DFA is the fastest search kind; the phrase sets of contact-center rules (thousands
        // of short phrases) keep its memory to a few megabytes.
        // Standard semantics copies every phrase ending at a state into its match list, which
        // is what makes reading the matches only at word ends complete. No prefilter: the
        // search is driven by hand and never consults one.
        let dfa = DFA::builder()
            .match_kind(MatchKind::Standard)
            .start_kind(StartKind::Unanchored)
            .prefilter(false)
            .build(&self.phrases)
            .map_err(|e| TriggerError::Automaton(e.to_string()))?;
        let start = dfa.start_state(Anchored::No).map_err(|e| TriggerError::Automaton(e.to_string()))?;
        Ok(KeywordIndex { dfa, start, phrases: self.phrases, by_text: self.by_text })
    }
}

/// The compiled phrase set. Immutable and shareable across conversations and threads.
#[derive(Debug, Clone)]
pub struct KeywordIndex {
    dfa: DFA,
    /// The unanchored start state, looked up once.
    start: StateID,
    phrases: Vec<String>,
    by_text: HashMap<String, PhraseId>,
}

impl KeywordIndex {
    /// Builds an index from raw phrases; ids follow first appearance.
    pub fn from_phrases<'p>(phrases: impl IntoIterator<Item = &'p str>) -> Result<KeywordIndex, TriggerError> {
        let mut b = KeywordIndexBuilder::new();
        for p in phrases {
            b.add(p)?;
        }
        b.build()
    }

    /// How many distinct (normalized) phrases the index holds.
    pub fn len(&self) -> usize {
        self.phrases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.phrases.is_empty()
    }

    /// The id of a raw phrase, if the index holds it.
    pub fn lookup(&self, phrase: &str) -> Option<PhraseId> {
        self.by_text.get(super::normalize::normalize(phrase).as_str()).copied()
    }

    /// The normalized text of a phrase.
    pub fn phrase(&self, id: PhraseId) -> Option<&str> {
        self.phrases.get(id.0 as usize).map(String::as_str)
    }

    /// Calls `found` with every whole-word occurrence of a phrase in already-normalized text
    /// (see [`super::normalize`]), in order of where it ends. A phrase said twice is reported
    /// twice. Allocates nothing.
    pub fn for_each_match(&self, normalized: &str, mut found: impl FnMut(PhraseId)) {
        let bytes = normalized.as_bytes();
        let mut sid = self.start;
        for (i, &b) in bytes.iter().enumerate() {
            if b == b' ' {
                self.word_end(sid, i, bytes, &mut found);
            }
            sid = self.dfa.next_state(Anchored::No, sid, b);
        }
        self.word_end(sid, bytes.len(), bytes, &mut found);
    }

    /// The whole-word matches of `sid`, the state reached when a word ended at byte `end`.
    #[inline]
    fn word_end(&self, sid: StateID, end: usize, bytes: &[u8], found: &mut impl FnMut(PhraseId)) {
        if !self.dfa.is_match(sid) {
            return;
        }
        for k in 0..self.dfa.match_len(sid) {
            let pid = self.dfa.match_pattern(sid, k);
            let Some(start) = end.checked_sub(self.dfa.pattern_len(pid)) else { continue };
            if start == 0 || bytes.get(start - 1) == Some(&b' ') {
                // Pattern ids come from `phrases`, whose length fits u32 (checked in `add`).
                found(PhraseId(pid.as_u32()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::normalize::normalize;
    use super::*;

    fn found(index: &KeywordIndex, text: &str) -> Vec<String> {
        let norm = normalize(text);
        let mut v = Vec::new();
        index.for_each_match(&norm, |id| v.push(index.phrase(id).unwrap_or("?").to_owned()));
        v.sort();
        v
    }

    #[test]
    fn table() {
        let index = KeywordIndex::from_phrases([
            "refund",
            "Refund Request",
            "cancel my account",
            "café",
            "fraud",
            "straße",
            "re-fund",
        ])
        .expect("index");
        let cases: &[(&str, &[&str])] = &[
            ("I want a refund", &["refund"]),
            ("RÉFUND!", &["refund"]),
            ("refund!", &["refund"]),
            ("refunding is slow", &[]),
            ("prerefund", &[]),
            ("a refund request please", &["refund", "refund request"]),
            ("refund, request", &["refund", "refund request"]),
            ("please CANCEL my account", &["cancel my account"]),
            ("cancel my accounts", &[]),
            ("cancel account", &[]),
            ("the Cafe\u{301} is closed", &["cafe"]),
            ("the CAFÉ", &["cafe"]),
            ("cafeteria", &[]),
            ("Strasse 5", &["strasse"]),
            // "re-fund" normalizes to "re fund", which is its own phrase, not "refund".
            ("re-fund", &["re fund"]),
            ("refund refund", &["refund", "refund"]),
            ("", &[]),
            ("fraud", &["fraud"]),
        ];
        for (text, want) in cases {
            let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
            want.sort();
            assert_eq!(found(&index, text), want, "text {text:?}");
        }
    }

    #[test]
    fn duplicates_share_an_id_and_empty_phrases_are_rejected() {
        let mut b = KeywordIndexBuilder::new();
        let a = b.add("Refund").expect("add");
        let c = b.add("  REFUND! ").expect("add");
        assert_eq!(a, c);
        assert!(matches!(b.add(" !? "), Err(TriggerError::EmptyPhrase { .. })));
        let index = b.build().expect("build");
        assert_eq!(index.len(), 1);
        assert_eq!(index.lookup("réfund"), Some(a));
        assert_eq!(index.lookup("cancel"), None);
    }

    #[test]
    fn empty_index_matches_nothing() {
        let index = KeywordIndex::from_phrases(Vec::<&str>::new()).expect("index");
        assert!(index.is_empty());
        let mut hits = 0;
        index.for_each_match("refund", |_| hits += 1);
        assert_eq!(hits, 0);
    }

    /// Every whole-word occurrence, found the slow obvious way: each phrase at each offset.
    fn naive(phrases: &[&str], text: &str) -> Vec<String> {
        let mut v = Vec::new();
        for p in phrases {
            for at in (0..text.len()).filter(|&at| text[at..].starts_with(p)) {
                let end = at + p.len();
                if (at == 0 || text.as_bytes()[at - 1] == b' ') && (end == text.len() || text.as_bytes()[end] == b' ') {
                    v.push(p.to_string());
                }
            }
        }
        v.sort();
        v
    }

    #[test]
    fn agrees_with_a_naive_scan_on_generated_texts() {
        // Short words over a tiny alphabet, so phrases overlap, nest and repeat a lot.
        const WORDS: [&str; 6] = ["a", "b", "ab", "ba", "aba", "bab"];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let words = |next: &mut dyn FnMut(usize) -> usize, max: usize| {
            let n = 1 + next(max);
            (0..n).map(|_| WORDS[next(WORDS.len())]).collect::<Vec<_>>().join(" ")
        };
        for _ in 0..200 {
            let phrases: Vec<String> = (0..1 + next(8)).map(|_| words(&mut next, 3)).collect();
            let mut unique: Vec<&str> = phrases.iter().map(String::as_str).collect();
            unique.sort();
            unique.dedup();
            let index = KeywordIndex::from_phrases(unique.iter().copied()).expect("index");
            for _ in 0..20 {
                let text = words(&mut next, 12);
                assert_eq!(found(&index, &text), naive(&unique, &text), "phrases {unique:?}, text {text:?}");
            }
        }
    }

    // Throughput is measured by `cargo bench --bench perf` (group `triggers`), beside a
    // per-rule substring scan, not by a timed test.
}
