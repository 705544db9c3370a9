//! Reading CqrsApp manifests from files (the local runtime, tests, `cqrs-operator validate`).

use std::path::Path;

use kube::Resource;
use serde::Deserialize;

use crate::crd::CqrsApp;
use crate::validate::{InvalidSpec, validate_app};

/// Why a manifest could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not YAML, or not shaped like a CqrsApp.
    #[error("{source_name}: {message}")]
    Parse {
        /// The file (or `<input>`).
        source_name: String,
        /// The parser's message, with the field path and line.
        message: String,
    },
    /// No CqrsApp in the file, or more than one.
    #[error("{source_name}: {message}")]
    Selection {
        /// The file.
        source_name: String,
        /// What was found.
        message: String,
    },
    /// A CqrsApp that breaks the rules.
    #[error("{source_name}: CqrsApp {name} is invalid: {errors}")]
    Invalid {
        /// The file.
        source_name: String,
        /// The app's name.
        name: String,
        /// Each field's problem.
        errors: InvalidSpec,
    },
}

/// Reads the single CqrsApp in a YAML file (other documents, such as Secrets, are skipped)
/// and validates it.
pub fn load(path: &Path) -> Result<CqrsApp, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// Parses and validates the single CqrsApp in `text`.
pub fn parse(text: &str, source_name: &str) -> Result<CqrsApp, ManifestError> {
    let parse_err = |message: String| ManifestError::Parse {
        source_name: source_name.into(),
        message,
    };
    let mut apps = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value =
            serde_yaml::Value::deserialize(document).map_err(|e| parse_err(e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default();
        if kind != "CqrsApp" {
            continue;
        }
        let api_version = value
            .get("apiVersion")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let expected = format!("{}/{}", CqrsApp::group(&()), CqrsApp::version(&()));
        if api_version != expected {
            return Err(parse_err(format!(
                "apiVersion {api_version:?} is not {expected:?}"
            )));
        }
        // NB: through serde_path_to_error, so a type error names the field (spec.queues[0]...),
        // and serde_ignored, so a misspelt field is an error instead of silently ignored (as
        // `kubectl apply` with strict field validation does).
        let mut unknown = Vec::new();
        let mut track = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
        let ignored = serde_ignored::Deserializer::new(value, &mut track);
        let app: CqrsApp = serde_path_to_error::deserialize(ignored).map_err(|e| {
            let path = e.path().to_string();
            parse_err(format!("{path}: {}", e.into_inner()))
        })?;
        // `apiVersion` and `kind` were checked above and `status` is the operator's to write;
        // anything else unknown is a mistake.
        unknown.retain(|p| !(p == "apiVersion" || p == "kind" || p.starts_with("status")));
        if !unknown.is_empty() {
            return Err(parse_err(format!(
                "unknown field(s) {} (check the spelling against `kubectl explain cqrsapp.spec`)",
                unknown.join(", ")
            )));
        }
        apps.push(app);
    }
    let app = match apps.len() {
        1 => apps.remove(0),
        0 => {
            return Err(ManifestError::Selection {
                source_name: source_name.into(),
                message: "no document of kind CqrsApp (apiVersion cqrs.dev/v1alpha1)".into(),
            });
        }
        n => {
            return Err(ManifestError::Selection {
                source_name: source_name.into(),
                message: format!("{n} CqrsApps in one file; put each in its own file"),
            });
        }
    };
    let name = app.metadata.name.clone().unwrap_or_default();
    validate_app(&name, &app.spec).map_err(|errors| ManifestError::Invalid {
        source_name: source_name.into(),
        name,
        errors,
    })?;
    Ok(app)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn examples_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
    }

    #[test]
    fn every_example_parses_and_validates() {
        let mut seen = 0;
        for entry in std::fs::read_dir(examples_dir()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let app = load(&path).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(app.metadata.name.as_deref(), Some("pieshop"));
                seen += 1;
            }
        }
        assert!(seen >= 2, "expected the Azurite and the Azure example");
    }

    #[test]
    fn other_documents_are_skipped() {
        let text = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n---\n".to_string()
            + &std::fs::read_to_string(examples_dir().join("pieshop-azurite.yaml")).unwrap();
        assert!(parse(&text, "t.yaml").is_ok());
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let cases = [
            ("kind: Secret\n", "no document of kind CqrsApp"),
            (
                "apiVersion: cqrs.dev/v1\nkind: CqrsApp\nmetadata: {name: a}\nspec: {}\n",
                "is not \"cqrs.dev/v1alpha1\"",
            ),
            (
                "apiVersion: cqrs.dev/v1alpha1\nkind: CqrsApp\nmetadata: {name: a}\nspec: {}\n",
                "missing field `storage`",
            ),
            (
                "apiVersion: cqrs.dev/v1alpha1\nkind: CqrsApp\nmetadata: {name: a}\nspec: {storage: {}, queues: [{name: q1, maxDequeueCount: many}]}\n",
                "spec.queues[0].maxDequeueCount",
            ),
            (
                "apiVersion: cqrs.dev/v1alpha1\nkind: CqrsApp\nmetadata: {name: a}\nspec: {storage: {}}\n",
                "spec.storage: set exactly one",
            ),
            ("key: [unclosed\n", "line 1"),
            (
                "apiVersion: cqrs.dev/v1alpha1\nkind: CqrsApp\nmetadata: {name: a}\nspec: {storage: {}, workers: [{name: w, image: i, queue: q, scalng: {}}]}\n",
                "unknown field(s) spec.workers.0.scalng",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(text, "app.yaml").unwrap_err().to_string();
            assert!(err.starts_with("app.yaml: "), "{err}");
            assert!(
                err.contains(expected),
                "{text:?} -> {err:?} should contain {expected:?}"
            );
        }
    }
}
