//! Replays every fuzz target's corpus (and deterministic mutations of it) through the same
//! bodies the fuzzers run, so each `cargo test` exercises them without a fuzzing toolchain.
//! Longer coverage-guided runs happen in `.ci/run` with `cargo fuzz`.

use std::path::PathBuf;

use callvault::fuzz_targets;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "empty corpus {}", dir.display());
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// Seeds plus bit flips, byte overwrites, truncations and splices, reproducibly.
fn mutations(seeds: &[Vec<u8>], per_seed: usize) -> Vec<Vec<u8>> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut out = seeds.to_vec();
    for seed in seeds {
        for _ in 0..per_seed {
            let mut m = seed.clone();
            for _ in 0..=(next() % 4) {
                if m.is_empty() {
                    break;
                }
                let i = (next() as usize) % m.len();
                match next() % 5 {
                    0 => m[i] ^= 1 << (next() % 8),
                    1 => m[i] = next() as u8,
                    2 => m.truncate(i),
                    3 => m.insert(i, next() as u8),
                    _ => {
                        let other = &seeds[(next() as usize) % seeds.len()];
                        let j = (next() as usize) % other.len().max(1);
                        m.splice(i.., other[j..].iter().copied());
                    }
                }
            }
            out.push(m);
        }
    }
    out
}

#[test]
fn rtp_parse_corpus() {
    mutations(&corpus("rtp_parse"), 2000).iter().for_each(|d| fuzz_targets::rtp_parse(d));
}

#[test]
fn timeline_corpus() {
    mutations(&corpus("timeline"), 150).iter().for_each(|d| fuzz_targets::timeline(d));
}

#[test]
fn capture_corpus() {
    mutations(&corpus("capture"), 1000).iter().for_each(|d| fuzz_targets::capture(d));
}

#[test]
fn sip_parse_corpus() {
    mutations(&corpus("sip_parse"), 2000).iter().for_each(|d| fuzz_targets::sip_parse(d));
}

#[test]
fn sealed_file_corpus() {
    let mut seeds = corpus("sealed_file");
    seeds.push(fuzz_targets::sealed_file_seed(true));
    seeds.push(fuzz_targets::sealed_file_seed(false));
    mutations(&seeds, 300).iter().for_each(|d| fuzz_targets::sealed_file(d));
}

/// The committed seeds are still valid sealed files under the target's fixed keys (a format
/// change must regenerate them: `cargo test --test fuzz_corpus -- --ignored`).
#[test]
fn sealed_file_seeds_open() {
    let keys = fuzz_targets::sealed_file_keys();
    for seed in corpus("sealed_file") {
        callvault::seal::SealedReader::open(std::io::Cursor::new(seed), &keys).expect("a seed opens");
    }
}

#[test]
#[ignore = "writes the sealed_file seed corpus"]
fn write_sealed_file_seeds() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/sealed_file");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("finalised"), fuzz_targets::sealed_file_seed(true)).unwrap();
    std::fs::write(dir.join("unfinished"), fuzz_targets::sealed_file_seed(false)).unwrap();
}

#[test]
#[ignore = "replays one input from $FUZZ_INPUT through the timeline target"]
fn replay_one_timeline_input() {
    let path = std::env::var("FUZZ_INPUT").expect("FUZZ_INPUT");
    let data = std::fs::read(path).unwrap();
    let t = std::time::Instant::now();
    fuzz_targets::timeline(&data);
    eprintln!("{} bytes in {:?}", data.len(), t.elapsed());
}

#[test]
fn range_header_corpus() {
    mutations(&corpus("range_header"), 2000).iter().for_each(|d| fuzz_targets::range_header(d));
}

#[test]
fn wav_view_corpus() {
    mutations(&corpus("wav_view"), 2000).iter().for_each(|d| fuzz_targets::wav_view(d));
}
