//! The keyword index: every trigger phrase in one Aho-Corasick automaton, matched as whole words.
//!
//! Phrases are normalized exactly like utterances ([`super::normalize`]), deduplicated, and
//! compiled into a single automaton, so one pass over an utterance finds every phrase in it
//! no matter how many rules exist. Matching is *overlapping* (standard semantics): "refund" and
//! "refund request" both match "i want a refund request", which leftmost-longest would hide.
//! Whole words: a match counts only if it starts at the beginning of the text or after a space
//! and ends at the end of the text or before a space; normalized text has single spaces
//! between words and phrases never start or end with one.

use std::collections::HashMap;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};

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
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .kind(Some(AhoCorasickKind::DFA))
            .build(&self.phrases)
            .map_err(|e| TriggerError::Automaton(e.to_string()))?;
        Ok(KeywordIndex { ac, phrases: self.phrases, by_text: self.by_text })
    }
}

/// The compiled phrase set. Immutable and shareable across conversations and threads.
#[derive(Debug, Clone)]
pub struct KeywordIndex {
    ac: AhoCorasick,
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

    /// Every whole-word occurrence of a phrase in already-normalized text (see
    /// [`super::normalize`]). A phrase said twice is reported twice. Allocates nothing.
    pub fn matches<'a>(&'a self, normalized: &'a str) -> impl Iterator<Item = PhraseId> + 'a {
        let bytes = normalized.as_bytes();
        self.ac.find_overlapping_iter(normalized).filter_map(move |m| {
            let starts_word = m.start() == 0 || bytes[m.start() - 1] == b' ';
            let ends_word = m.end() == bytes.len() || bytes[m.end()] == b' ';
            // Pattern ids come from `phrases`, whose length fits u32 (checked in `add`).
            (starts_word && ends_word).then(|| PhraseId(m.pattern().as_u32()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::normalize::normalize;
    use super::*;

    fn found(index: &KeywordIndex, text: &str) -> Vec<String> {
        let norm = normalize(text);
        let mut v: Vec<String> = index.matches(&norm).map(|id| index.phrase(id).unwrap_or("?").to_owned()).collect();
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
        assert_eq!(index.matches("refund").count(), 0);
    }

    // Throughput is measured by `cargo bench --bench perf` (group `triggers`), beside a
    // per-rule substring scan, not by a timed test.
}
