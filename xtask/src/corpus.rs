//! The HELO corpus (`helo-filter/tests-data/helo-public.tsv`, the shared
//! `shared/corpus/helo-public.tsv` plus two project-only columns, `soft` and `score`: see
//! `helo-filter/tests-data/README.md`): one test vector a line, read by the policy engine's
//! tests and by the `check` binary's test.

use std::net::IpAddr;

use crate::paths::workspace_root;

/// The local identity the corpus assumes (`helo-policy.md`), as `helo-filter` flags.
pub const IDENTITY_ARGS: [&str; 8] = [
    "--our-name",
    "mx.example.org",
    "--our-domain",
    "example.org",
    "--our-addr",
    "198.51.100.25",
    "--our-addr",
    "2001:db8:25::25",
];

/// One corpus row.
#[derive(Clone, Debug)]
pub struct CorpusRow {
    /// Line number in the file, for messages.
    pub line: usize,
    pub helo: String,
    pub client: IpAddr,
    pub reject: bool,
    /// Acceptable primary reasons of a reject (reason codes); empty on an accept.
    pub reasons: Vec<String>,
    /// The row needs the fixture DNS server.
    pub dns: bool,
    /// Every soft reason the verdict must list (accept or reject), in reason order.
    pub soft: Vec<String>,
    /// The verdict's score: the sum of the soft weights.
    pub score: u32,
}

/// Reads every row; a malformed line is a test failure naming it.
pub fn corpus() -> Vec<CorpusRow> {
    let path = workspace_root().join("helo-filter/tests-data/helo-public.tsv");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read the corpus {}: {e}", path.display()));
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let number = i + 1;
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        assert!(
            f.len() == 8,
            "corpus line {number}: expected 8 columns (the shared six, soft, score): {line:?}"
        );
        rows.push(CorpusRow {
            line: number,
            helo: f[0].to_owned(),
            client: f[1]
                .parse()
                .unwrap_or_else(|e| panic!("corpus line {number}: {e}")),
            reject: match f[2] {
                "reject" => true,
                "accept" => false,
                v => panic!("corpus line {number}: verdict {v:?}"),
            },
            reasons: match f[3] {
                "-" => Vec::new(),
                list => list.split(',').map(|c| c.trim().to_owned()).collect(),
            },
            dns: match f[4] {
                "dns" => true,
                "offline" => false,
                m => panic!("corpus line {number}: mode {m:?}"),
            },
            soft: match f[6] {
                "-" => Vec::new(),
                list => list.split(',').map(|c| c.trim().to_owned()).collect(),
            },
            score: f[7]
                .parse()
                .unwrap_or_else(|e| panic!("corpus line {number}: score {:?}: {e}", f[7])),
        });
    }
    rows
}

/// One configuration the daemon must refuse (`tests/data/refused-configs/NN-name.toml`),
/// shared by the validation's unit test and the end-to-end test of `config check`, `run`
/// and `reload`. Its first line says where and why: ``# refused: line N, key `K`: WORDS``.
#[derive(Clone, Debug)]
pub struct RefusedConfig {
    /// The file's name, for messages.
    pub name: String,
    pub text: String,
    /// The line the error must name.
    pub line: usize,
    /// The dotted key the error must name.
    pub key: String,
    /// Words the error message must contain.
    pub words: String,
}

/// Every refused configuration, in file-name order.
pub fn refused_configs() -> Vec<RefusedConfig> {
    let dir = workspace_root().join("tests/data/refused-configs");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let name = path
                .file_name()
                .expect("a name")
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&path).expect("a refused configuration");
            let parsed = text.lines().next().and_then(|first| {
                let rest = first.strip_prefix("# refused: line ")?;
                let (line, rest) = rest.split_once(", key `")?;
                let (key, words) = rest.split_once("`: ")?;
                Some((line.parse().ok()?, key.to_owned(), words.to_owned()))
            });
            let (line, key, words) = parsed.unwrap_or_else(|| {
                panic!("{name}: the first line must be \"# refused: line N, key `K`: WORDS\"")
            });
            RefusedConfig {
                name,
                text,
                line,
                key,
                words,
            }
        })
        .collect()
}
