//! The performance suite: every figure in BENCHMARKS.md, each beside a baseline measured
//! in the same run, so ratios hold across machines. Run: `cargo bench --bench perf`.

use std::sync::OnceLock;

use divan::{black_box, Bencher};
use gc_assist::audit::{AuditDraft, AuditRecord, AuditTime, Chain};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

/// The binary's allocator (src/main.rs), so the bench measures what production runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    divan::main();
}

const TUTORIAL: &[u8] = include_bytes!("../examples/injection.json");

/// Payload validation against the cost of merely parsing the same bytes as JSON.
mod contract {
    use super::*;

    #[divan::bench(name = "baseline: serde_json parse to Value")]
    fn parse_only(b: Bencher) {
        b.counter(divan::counter::ItemsCount::new(1usize))
            .bench(|| serde_json::from_slice::<serde_json::Value>(black_box(TUTORIAL)).unwrap());
    }

    #[divan::bench(name = "validate_json (parse + every rule + typed payload)")]
    fn validate(b: Bencher) {
        b.counter(divan::counter::ItemsCount::new(1usize))
            .bench(|| gc_assist::contract::validate_json(black_box(TUTORIAL)).unwrap());
    }
}

const RECORDS: usize = 100_000;

fn draft(i: usize) -> AuditDraft {
    AuditDraft {
        conversation_id: Uuid::from_u128(i as u128 / 7),
        prompt_id: Uuid::from_u128(42),
        injection_id: Uuid::from_u128(i as u128),
        status: "delivered".into(),
        latency_ms: Some(3),
        error: None,
        actor: "api:bench".into(),
        reason: None,
    }
}

fn chain_records() -> &'static [AuditRecord] {
    static RECORDS_CELL: OnceLock<Vec<AuditRecord>> = OnceLock::new();
    RECORDS_CELL.get_or_init(|| {
        let mut chain = Chain::genesis();
        let mut rng = rand::thread_rng();
        let at = AuditTime::parse("2025-03-04T10:15:30.250Z").unwrap();
        (0..RECORDS).map(|i| chain.append(draft(i), at, &mut rng).unwrap()).collect()
    })
}

/// Audit chain: verification and in-memory append, against SHA-256 over the same bytes.
mod audit {
    use super::*;

    #[divan::bench(name = "baseline: SHA-256 of each canonical record (no chain)")]
    fn hash_only(b: Bencher) {
        let records = chain_records();
        let canon: Vec<Vec<u8>> = records
            .iter()
            .map(|r| {
                let mut buf = Vec::new();
                r.write_canonical(&mut buf);
                buf
            })
            .collect();
        b.counter(divan::counter::ItemsCount::new(RECORDS)).bench(|| {
            for c in &canon {
                black_box(Sha256::digest(c));
            }
        });
    }

    #[divan::bench(name = "verify chain (records/s)")]
    fn verify(b: Bencher) {
        let records = chain_records();
        b.counter(divan::counter::ItemsCount::new(RECORDS)).bench(|| {
            let v = gc_assist::audit::verify(records.iter(), None, &[], &[]);
            assert!(v.is_valid());
        });
    }

    #[divan::bench(name = "append in memory (records/s)")]
    fn append(b: Bencher) {
        let at = AuditTime::parse("2025-03-04T10:15:30.250Z").unwrap();
        b.counter(divan::counter::ItemsCount::new(10_000usize)).bench(|| {
            let mut chain = Chain::genesis();
            let mut rng = rand::thread_rng();
            for i in 0..10_000 {
                black_box(chain.append(draft(i), at, &mut rng).unwrap());
            }
        });
    }
}

/// The Genesys request path (pacing, token cache, retry classification, typed decode)
/// against a raw reqwest GET of the same emulator URL with a fixed bearer.
mod genesys {
    use super::*;
    use gc_assist::emulator::{self, EmulatorConfig, NewConversation};
    use gc_assist::genesys::GenesysClient;

    struct Fixture {
        rt: tokio::runtime::Runtime,
        client: GenesysClient,
        raw: reqwest::Client,
        url: String,
        token: String,
        conversation_id: String,
        _emu: emulator::Emulator,
    }

    fn fixture() -> &'static Fixture {
        static F: OnceLock<Fixture> = OnceLock::new();
        F.get_or_init(|| {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            let (emu, client, token) = rt.block_on(async {
                // A limit far above what the benchmark reaches, so neither side is paced
                // or throttled and the comparison is of request paths alone.
                let cfg = EmulatorConfig { requests_per_minute: 100_000_000, ..EmulatorConfig::default() };
                let emu = emulator::spawn(cfg).await.unwrap();
                let mut s = emu.client_settings(&gc_assist::config::Config::defaults().genesys).unwrap();
                s.requests_per_minute = 100_000_000;
                s.burst = 100_000;
                let client = GenesysClient::new(s).unwrap();
                let token = emu.issue_agent_token("00000000-0000-4000-8000-000000000001");
                (emu, client, token)
            });
            let call = emu.create_conversation(NewConversation::default());
            let url = format!("{}/api/v2/conversations/{}", emu.base_url(), call.conversation_id);
            Fixture {
                rt,
                client,
                raw: reqwest::Client::new(),
                url,
                token,
                conversation_id: call.conversation_id,
                _emu: emu,
            }
        })
    }

    #[divan::bench(name = "baseline: raw reqwest GET conversation + JSON decode")]
    fn raw(b: Bencher) {
        let f = fixture();
        b.bench(|| {
            f.rt.block_on(async {
                let r = f.raw.get(&f.url).bearer_auth(&f.token).send().await.unwrap();
                assert!(r.status().is_success());
                black_box(r.json::<serde_json::Value>().await.unwrap())
            })
        });
    }

    #[divan::bench(name = "GenesysClient::get_conversation")]
    fn typed(b: Bencher) {
        let f = fixture();
        b.bench(|| f.rt.block_on(async { black_box(f.client.get_conversation(&f.conversation_id).await.unwrap()) }));
    }
}

/// Keyword trigger evaluation: 1,000 armed keyword phrases over customer utterances, one
/// Aho-Corasick automaton against the naive per-rule substring scan (the DESIGN.md §7
/// baseline). Both normalize each utterance the same way first.
mod triggers {
    use super::*;
    use gc_assist::triggers::{KeywordIndex, Normalizer};

    const UTTERANCES: [&str; 4] = [
        "i would like to check the balance on my monthly invoice please",
        "the router keeps showing an error since the last delivery",
        "Can you tell me why there is a late fee on this order?",
        "my payment went through but the service is still off",
    ];
    const BATCH: usize = 10_000;

    fn phrases() -> Vec<String> {
        let words = [
            "account", "balance", "charge", "delivery", "error", "fee", "green", "help", "invoice", "jacket", "kettle",
            "late", "monthly", "number", "order", "payment", "quick", "router", "service", "ticket",
        ];
        let mut phrases = Vec::new();
        for (i, a) in words.iter().enumerate() {
            for (j, b) in words.iter().enumerate() {
                phrases.push(format!("{a} {b}"));
                phrases.push(format!("{a}{j} {b}{i}"));
            }
        }
        phrases.extend((0..200).map(|i| format!("phrase{i}")));
        phrases.truncate(1000);
        phrases
    }

    #[divan::bench(name = "baseline: per-rule substring scan, 1,000 phrases (utterances/s)")]
    fn substring_scan(b: Bencher) {
        let phrases = phrases();
        let mut norm = Normalizer::new();
        b.counter(divan::counter::ItemsCount::new(BATCH)).bench_local(|| {
            let mut hits = 0usize;
            for i in 0..BATCH {
                let text = norm.normalize(UTTERANCES[i % UTTERANCES.len()]);
                hits += phrases.iter().filter(|p| text.contains(p.as_str())).count();
            }
            black_box(hits)
        });
    }

    /// The whole per-event path of the live runtime: one conversation with 1,000 keyword
    /// rules armed (one phrase each), customer utterances through `on_event` (normalize,
    /// automaton, evidence, rule checks, decisions).
    #[divan::bench(name = "rule engine, 1,000 keyword rules armed (utterances/s)")]
    fn engine(b: Bencher) {
        use gc_assist::contract::TriggerCondition;
        use gc_assist::triggers::events::{Channel, Utterance};
        use gc_assist::triggers::{CompiledRules, ConversationEngine, Event, Rule, RulePrompt, RuleSet};
        let rules: Vec<Rule> = phrases()
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                Rule::new(
                    format!("r{i}"),
                    RulePrompt::Catalogue(Uuid::nil()),
                    vec![TriggerCondition::Keyword { phrase: p, threshold: None }],
                )
            })
            .collect();
        let compiled = CompiledRules::compile(&RuleSet { origin: "bench".into(), rules }, None).unwrap();
        let events: Vec<Event> = UTTERANCES
            .iter()
            .map(|t| {
                Event::Utterance(Utterance {
                    is_final: true,
                    channel: Channel::Customer,
                    text: t.to_string(),
                    confidence: Some(0.9),
                    utterance_id: None,
                })
            })
            .collect();
        b.counter(divan::counter::ItemsCount::new(BATCH)).bench_local(|| {
            let mut engine = ConversationEngine::new();
            let mut decisions = engine.start(&compiled, Some("q"), None, 0).len();
            for i in 0..BATCH {
                decisions += engine.on_event(&compiled, &events[i % events.len()], i as i64 * 1000).len();
            }
            black_box(decisions)
        });
    }

    #[divan::bench(name = "keyword automaton, 1,000 phrases (utterances/s)")]
    fn automaton(b: Bencher) {
        let phrases = phrases();
        let index = KeywordIndex::from_phrases(phrases.iter().map(String::as_str)).unwrap();
        let mut norm = Normalizer::new();
        b.counter(divan::counter::ItemsCount::new(BATCH)).bench_local(|| {
            let mut hits = 0usize;
            for i in 0..BATCH {
                let text = norm.normalize(UTTERANCES[i % UTTERANCES.len()]);
                index.for_each_match(text, |_| hits += 1);
            }
            black_box(hits)
        });
    }
}

/// Replay (`gc-assist replay`) over the recorded calls with examples/rules.yaml, all beside
/// the bare JSON parse of the same lines (the baseline): the reference end to end (a `Value`
/// per line, then evaluate), the cold end to end (fast typed parse, then evaluate; in memory
/// on one thread, and from the files on every core), the warm end to end (compiled calls
/// read from the cache, then evaluate) and evaluation alone. The warm run and evaluation
/// repeat the calls past a million utterances. `GC_ASSIST_BENCH_CALLS=DIR` picks the calls
/// (default: the shared set beside the project, else examples/calls).
mod replay {
    use super::*;
    use gc_assist::triggers::replay::{
        evaluate, load_calls, load_calls_with, parse_call, parse_call_reference, Call, LoadOptions,
    };
    use gc_assist::triggers::{CompiledRules, RuleSet};

    struct Fixture {
        dir: std::path::PathBuf,
        texts: Vec<(String, String)>,
        calls: Vec<Call>,
        utterances: usize,
        rules: CompiledRules,
        cache: tempfile::TempDir,
    }

    fn fixture() -> &'static Fixture {
        static F: OnceLock<Fixture> = OnceLock::new();
        F.get_or_init(|| {
            let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
            let shared = root.join("../shared/data/calls");
            let dir = match std::env::var_os("GC_ASSIST_BENCH_CALLS") {
                Some(d) => std::path::PathBuf::from(d),
                None if shared.join("calls.json").is_file() => shared,
                None => root.join("examples/calls"),
            };
            let calls = load_calls(&dir, |_, _| {}).unwrap();
            let texts: Vec<(String, String)> = calls
                .calls
                .iter()
                .map(|c| (c.name.clone(), std::fs::read_to_string(dir.join(&c.name)).unwrap()))
                .collect();
            // The fast parse must give the reference's events on these very calls.
            for (name, text) in &texts {
                let (a, b) = (parse_call(name, text).unwrap(), parse_call_reference(name, text).unwrap());
                assert!(a.steps == b.steps && a.utterances == b.utterances, "{name}: fast != reference");
            }
            let set = RuleSet::load(&root.join("examples/rules.yaml")).unwrap();
            let rules = CompiledRules::compile(&set, None).unwrap();
            // Fill the cache once, so the warm bench reads compiled calls only.
            let cache = tempfile::tempdir().unwrap();
            let options = LoadOptions { cache: Some(cache.path().to_path_buf()), threads: 0 };
            let (_, stats) = load_calls_with(&dir, &options, |_, _| {}).unwrap();
            assert_eq!(stats.parsed, calls.calls.len());
            eprintln!(
                "replay fixture: {} calls, {} utterances from {}",
                calls.calls.len(),
                calls.utterances(),
                dir.display()
            );
            Fixture { dir, texts, utterances: calls.utterances() as usize, calls: calls.calls, rules, cache }
        })
    }

    /// How many passes over the calls make at least a million utterances.
    fn repeats(f: &Fixture) -> usize {
        1_000_000usize.div_ceil(f.utterances.max(1))
    }

    #[divan::bench(name = "baseline: serde_json parse of the recorded lines (utterances/s)", sample_count = 20)]
    fn json_parse(b: Bencher) {
        let f = fixture();
        b.counter(divan::counter::ItemsCount::new(f.utterances)).bench(|| {
            let mut n = 0usize;
            for (_, text) in &f.texts {
                for line in text.lines() {
                    n += serde_json::from_str::<serde_json::Value>(line).map_or(0, |_| 1);
                }
            }
            black_box(n)
        });
    }

    #[divan::bench(name = "replay end to end, reference: Value parse + evaluate (utterances/s)", sample_count = 20)]
    fn end_to_end_reference(b: Bencher) {
        let f = fixture();
        b.counter(divan::counter::ItemsCount::new(f.utterances)).bench(|| {
            let calls: Vec<Call> =
                f.texts.iter().map(|(name, text)| parse_call_reference(name, text).unwrap()).collect();
            black_box(evaluate(&f.rules, &calls))
        });
    }

    #[divan::bench(
        name = "replay end to end, cold: typed parse + evaluate, 1 thread (utterances/s)",
        sample_count = 20
    )]
    fn end_to_end(b: Bencher) {
        let f = fixture();
        b.counter(divan::counter::ItemsCount::new(f.utterances)).bench(|| {
            let calls: Vec<Call> = f.texts.iter().map(|(name, text)| parse_call(name, text).unwrap()).collect();
            black_box(evaluate(&f.rules, &calls))
        });
    }

    #[divan::bench(name = "replay end to end, cold from files, every core (utterances/s)", sample_count = 20)]
    fn end_to_end_files(b: Bencher) {
        let f = fixture();
        b.counter(divan::counter::ItemsCount::new(f.utterances)).bench(|| {
            let calls = load_calls(&f.dir, |_, _| {}).unwrap();
            black_box(evaluate(&f.rules, &calls.calls))
        });
    }

    #[divan::bench(
        name = "replay end to end, warm: compiled calls + evaluate, >= 1M utterances (utterances/s)",
        sample_count = 5,
        sample_size = 1
    )]
    fn end_to_end_warm(b: Bencher) {
        let f = fixture();
        let r = repeats(f);
        let options = LoadOptions { cache: Some(f.cache.path().to_path_buf()), threads: 0 };
        b.counter(divan::counter::ItemsCount::new(f.utterances * r)).bench(|| {
            let mut n = 0;
            for _ in 0..r {
                let (calls, stats) = load_calls_with(&f.dir, &options, |_, _| {}).unwrap();
                assert_eq!(stats.parsed, 0);
                n += evaluate(&f.rules, &calls.calls);
            }
            black_box(n)
        });
    }

    #[divan::bench(name = "replay evaluation, >= 1M utterances (utterances/s)", sample_count = 5, sample_size = 1)]
    fn evaluation(b: Bencher) {
        let f = fixture();
        let r = repeats(f);
        b.counter(divan::counter::ItemsCount::new(f.utterances * r)).bench(|| {
            let mut n = 0;
            for _ in 0..r {
                n += evaluate(&f.rules, &f.calls);
            }
            black_box(n)
        });
    }
}
