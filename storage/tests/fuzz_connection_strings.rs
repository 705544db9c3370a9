//! Property tests: the connection-string parser never panics, and never echoes a key.

#![allow(clippy::unwrap_used)] // test helpers: a failed step should fail the test loudly

use cqrs_storage::ConnectionString;
use proptest::prelude::*;

const SETTINGS: &[&str] = &[
    "UseDevelopmentStorage",
    "DefaultEndpointsProtocol",
    "AccountName",
    "AccountKey",
    "EndpointSuffix",
    "BlobEndpoint",
    "QueueEndpoint",
    "TableEndpoint",
    "SharedAccessSignature",
    "DevelopmentStorageProxyUri",
    "Bogus",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_text_never_panics(input in ".{0,300}") {
        let _ = ConnectionString::parse(&input);
    }

    #[test]
    fn settings_soup_never_panics_and_never_echoes_the_key(
        parts in proptest::collection::vec((0..SETTINGS.len(), "[ -~]{0,40}"), 0..8),
        key in "[A-Za-z0-9+/]{24,60}={0,2}",
    ) {
        let mut input: Vec<String> = parts.iter().map(|(i, v)| format!("{}={v}", SETTINGS[*i])).collect();
        input.push(format!("AccountKey={key}"));
        let text = input.join(";");
        if let Err(e) = ConnectionString::parse(&text) {
            let message = e.to_string();
            prop_assert!(!message.contains(&key), "error echoes the key: {message}");
        }
    }

    #[test]
    fn a_pasted_key_is_never_echoed(key in "[A-Za-z0-9+/]{40,88}={0,2}") {
        for text in [key.clone(), format!("AccountName=a;{key}"), format!("{key};AccountName=abc")] {
            if let Err(e) = ConnectionString::parse(&text) {
                let message = e.to_string();
                let stripped = key.trim_end_matches('=');
                prop_assert!(!message.contains(stripped), "error echoes a pasted key: {message}");
            }
        }
    }
}
