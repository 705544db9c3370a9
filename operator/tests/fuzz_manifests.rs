//! Property tests: reading and validating manifests never panics, whatever the input.

#![allow(clippy::unwrap_used)] // test helpers: a failed step should fail the test loudly

use cqrs_operator::manifest;
use proptest::prelude::*;

fn example() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/pieshop-azurite.yaml"
    ))
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    #[test]
    fn arbitrary_text_never_panics(input in "(?s).{0,400}") {
        let _ = manifest::parse(&input, "fuzz.yaml");
    }

    /// Random edits of a valid manifest: flipped, deleted and inserted characters reach the
    /// deserializer and the validator with odd but well-formed values (huge or negative
    /// numbers, empty names, unknown keys).
    #[test]
    fn mutated_manifests_never_panic(edits in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..3, "[ -~\n]"), 1..12)) {
        let mut text: Vec<char> = example().chars().collect();
        for (at, op, ch) in edits {
            if text.is_empty() {
                break;
            }
            let i = at.index(text.len());
            let c = ch.chars().next().unwrap_or('x');
            match op {
                0 => text[i] = c,
                1 => {
                    text.remove(i);
                }
                _ => text.insert(i, c),
            }
        }
        let text: String = text.into_iter().collect();
        if let Err(e) = manifest::parse(&text, "fuzz.yaml") {
            prop_assert!(e.to_string().starts_with("fuzz.yaml: "), "{e}");
        }
    }

    /// Numbers anywhere in the spec: the validator reports, never overflows.
    #[test]
    fn extreme_numbers_are_reported_not_panicked_on(n in any::<i64>(), m in any::<u32>()) {
        let text = example()
            .replace("maxReplicas: 4", &format!("maxReplicas: {n}"))
            .replace("targetQueueLength: 25", &format!("targetQueueLength: {m}"))
            .replace("maxDequeueCount: 5", &format!("maxDequeueCount: {n}"));
        let _ = manifest::parse(&text, "fuzz.yaml");
    }
}
