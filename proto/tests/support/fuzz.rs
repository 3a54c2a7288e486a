//! What the fuzz tests of every crate share: the case count, byte and JSON mutators, arbitrary JSON.
//!
//! Included by path (`#[path = ".../proto/tests/support/fuzz.rs"]`) from the agent's and the
//! collector's fuzz tests, so there is one mutator rather than three. Arbitrary bytes rarely get
//! past a parser's first check; mutating a recorded or generated valid input does, so most
//! properties here start from a valid input and break it a little.
#![allow(dead_code)]

use proptest::prelude::*;
use serde_json::{Map, Value};

/// `cases` per property in the suite; `PROPTEST_CASES` (a longer run) wins when set.
/// Failures found are kept in the crate's `proptest-regressions/fuzz.txt` (tests run from the
/// crate's folder) and replayed first on every run; proptest's default cannot place them for
/// a test outside `src/`.
pub fn config(cases: u32) -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = cases;
    }
    c.failure_persistence = Some(Box::new(
        proptest::test_runner::FileFailurePersistence::Direct("proptest-regressions/fuzz.txt"),
    ));
    c
}

/// Arbitrary bytes, at most `max` of them: bounded so a case cannot take long.
pub fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..=max)
}

/// Text that is mostly printable ASCII with separators, newlines, NULs and some non-ASCII: the
/// characters line-oriented parsers split on, which uniform `any::<String>()` rarely picks.
pub fn text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            6 => prop::char::range(' ', '~'),
            2 => prop::sample::select(vec!['\n', '\r', '\t', '\0', ':', '=', ' ', '"', '\\', '[', ']']),
            1 => any::<char>(),
        ],
        0..=max,
    )
    .prop_map(|v| v.into_iter().collect())
}

/// One change to a byte string. Positions are taken modulo the length, so any edit applies to
/// any input.
#[derive(Debug, Clone)]
pub enum Edit {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    /// Insert one of the caller's tokens (separators, keywords, magic numbers).
    Token(usize, usize),
    Delete(usize, usize),
    Duplicate(usize, usize),
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (any::<usize>(), 1..=255u8).prop_map(|(p, x)| Edit::Flip(p, x)),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(p, x)| Edit::Set(p, x)),
        2 => (any::<usize>(), bytes(8)).prop_map(|(p, b)| Edit::Insert(p, b)),
        3 => (any::<usize>(), any::<usize>()).prop_map(|(p, t)| Edit::Token(p, t)),
        2 => (any::<usize>(), 1..64usize).prop_map(|(p, n)| Edit::Delete(p, n)),
        1 => (any::<usize>(), 1..64usize).prop_map(|(p, n)| Edit::Duplicate(p, n)),
        1 => any::<usize>().prop_map(Edit::Truncate),
    ]
}

/// Applies `edits` to `seed`; tokens are what `Edit::Token` inserts.
pub fn apply(seed: &[u8], edits: &[Edit], tokens: &[&[u8]]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for e in edits {
        let at = |p: usize, len: usize| p % (len + 1);
        match e {
            Edit::Flip(p, x) if !b.is_empty() => {
                let i = p % b.len();
                b[i] ^= x;
            }
            Edit::Set(p, x) if !b.is_empty() => {
                let i = p % b.len();
                b[i] = *x;
            }
            Edit::Insert(p, ins) => {
                let i = at(*p, b.len());
                b.splice(i..i, ins.iter().copied());
            }
            Edit::Token(p, t) if !tokens.is_empty() => {
                let i = at(*p, b.len());
                b.splice(i..i, tokens[t % tokens.len()].iter().copied());
            }
            Edit::Delete(p, n) => {
                let i = at(*p, b.len());
                let end = (i + n).min(b.len());
                b.drain(i..end);
            }
            Edit::Duplicate(p, n) => {
                let i = at(*p, b.len());
                let end = (i + n).min(b.len());
                let copy = b[i..end].to_vec();
                b.splice(end..end, copy);
            }
            Edit::Truncate(p) => {
                let i = at(*p, b.len());
                b.truncate(i);
            }
            _ => {}
        }
    }
    b
}

/// `seed` with one to `max_edits` edits.
pub fn mutated(
    seed: Vec<u8>,
    tokens: &'static [&'static [u8]],
    max_edits: usize,
) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(edit(), 1..=max_edits).prop_map(move |e| apply(&seed, &e, tokens))
}

/// One of several seeds, mutated.
pub fn mutated_any(
    seeds: Vec<Vec<u8>>,
    tokens: &'static [&'static [u8]],
    max_edits: usize,
) -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(seeds),
        prop::collection::vec(edit(), 1..=max_edits),
    )
        .prop_map(move |(s, e)| apply(&s, &e, tokens))
}

/// Numbers that break arithmetic: zero, signs, the edges of the integer types, huge floats.
pub fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec![
            Value::from(0),
            Value::from(1),
            Value::from(-1),
            Value::from(u16::MAX),
            Value::from(u32::MAX),
            Value::from(u64::MAX),
            Value::from(i64::MIN),
            Value::from(i64::MAX),
            Value::from(100_000_000u64),
            Value::from(1e300),
            Value::from(-1e300),
            Value::from(0.5),
        ]),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
    ]
}

/// Strings that parsers look into: dates, times, hex, empty, long, control characters.
pub fn json_string() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec![
            "",
            " ",
            "true",
            "false",
            "null",
            "0",
            "-1",
            "25:61",
            "00:00",
            "mon",
            "*",
            "[",
            "[z-a]",
            "0781:5567",
            "https://",
            "/Date(-99999999999999999)/",
            "/Date(9999999999999999)/",
            "/Date(1732345678000+0100)/",
            "2024-01-15T10:00:00Z",
            "+262143-12-31T23:59:59Z",
            "-262143-01-01T00:00:00Z",
            "9999-99-99",
            "\u{0}",
            "é",
            "🙂",
        ])
        .prop_map(Value::from),
        text(40).prop_map(Value::from),
        "[a-z_.]{0,24}".prop_map(Value::from),
    ]
}

/// Arbitrary JSON, at most `depth` deep and a few items wide.
pub fn json(depth: u32) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        number(),
        json_string(),
    ];
    leaf.prop_recursive(depth, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-zA-Z_]{0,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// One change to a JSON document, at the `node`th node (preorder, modulo the count).
#[derive(Debug, Clone)]
pub enum JsonEdit {
    Replace(usize, Value),
    /// Removes a key of an object, or an item of an array.
    Remove(usize, usize),
    /// Adds a key to an object (an unknown field, or a known one from the caller's list).
    AddKey(usize, String, Value),
    /// Appends a copy of an array's first item, or a new item.
    Grow(usize, Value),
}

fn json_edit(keys: &'static [&'static str]) -> impl Strategy<Value = JsonEdit> {
    let key = prop_oneof![
        prop::sample::select(keys.to_vec()).prop_map(str::to_owned),
        "[a-z_]{1,10}",
    ];
    prop_oneof![
        4 => (any::<usize>(), json(2)).prop_map(|(n, v)| JsonEdit::Replace(n, v)),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(n, k)| JsonEdit::Remove(n, k)),
        2 => (any::<usize>(), key, json(2)).prop_map(|(n, k, v)| JsonEdit::AddKey(n, k, v)),
        1 => (any::<usize>(), json(1)).prop_map(|(n, v)| JsonEdit::Grow(n, v)),
    ]
}

fn count(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count).sum(),
        Value::Object(o) => o.values().map(count).sum(),
        _ => 0,
    }
}

/// Runs `f` on the `n`th node (preorder); false once the node was found.
fn visit(v: &mut Value, n: &mut usize, f: &mut dyn FnMut(&mut Value)) -> bool {
    if *n == 0 {
        f(v);
        return false;
    }
    *n -= 1;
    match v {
        Value::Array(a) => a.iter_mut().all(|c| visit(c, n, f)),
        Value::Object(o) => o.values_mut().all(|c| visit(c, n, f)),
        _ => true,
    }
}

/// Applies `edits` to a copy of `seed`.
pub fn apply_json(seed: &Value, edits: &[JsonEdit]) -> Value {
    let mut doc = seed.clone();
    for e in edits {
        let total = count(&doc);
        let (node, op) = match e {
            JsonEdit::Replace(n, _)
            | JsonEdit::Remove(n, _)
            | JsonEdit::AddKey(n, _, _)
            | JsonEdit::Grow(n, _) => (n % total, e),
        };
        let mut n = node;
        visit(&mut doc, &mut n, &mut |v| match (op, &mut *v) {
            (JsonEdit::Replace(_, new), v) => *v = new.clone(),
            (JsonEdit::Remove(_, k), Value::Object(o)) if !o.is_empty() => {
                let key = o.keys().nth(k % o.len()).cloned().unwrap_or_default();
                o.remove(&key);
            }
            (JsonEdit::Remove(_, k), Value::Array(a)) if !a.is_empty() => {
                let i = k % a.len();
                a.remove(i);
            }
            (JsonEdit::AddKey(_, k, new), Value::Object(o)) => {
                o.insert(k.clone(), new.clone());
            }
            (JsonEdit::Grow(_, new), Value::Array(a)) => {
                let item = a.first().cloned().unwrap_or_else(|| new.clone());
                a.push(item);
            }
            _ => {}
        });
    }
    doc
}

/// `seed` with one to `max_edits` structural edits; `keys` are field names worth adding.
pub fn mutated_json(
    seed: Value,
    keys: &'static [&'static str],
    max_edits: usize,
) -> impl Strategy<Value = Value> {
    prop::collection::vec(json_edit(keys), 1..=max_edits).prop_map(move |e| apply_json(&seed, &e))
}
