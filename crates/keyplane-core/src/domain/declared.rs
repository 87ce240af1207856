//! Declarative configuration as the core sees it: the binary reads the configuration file and
//! applies it (`keyplane/src/declare.rs`); the management API reaches that through
//! [`ConfigApplier`], which the binary registers, and answers an [`ApplyReport`].

use async_trait::async_trait;

/// What applying does (or would do) to one declared object.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ApplyItem {
    /// `org`, `project`, `service`, `role`, `member` or `client`.
    pub kind: String,
    /// Its name, with its organization and project where it has them (`acme/payments/x`).
    pub name: String,
    /// The line of the configuration file where it is declared.
    pub line: usize,
    /// `create`, `update` or `unchanged`.
    pub change: String,
    /// The fields an update changes.
    pub fields: Vec<String>,
}

/// The outcome of applying a configuration file, or of a dry run.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ApplyReport {
    pub file: String,
    pub dry_run: bool,
    pub items: Vec<ApplyItem>,
    /// Files a generated client secret was written to (on the server's machine).
    pub secrets_written: Vec<String>,
}

/// Applies a configuration file's declarations (the binary's implementation).
#[async_trait]
pub trait ConfigApplier: Send + Sync {
    /// `text`: the file's text (`None`: read `file`, or the server's own configuration file).
    /// An error names the file, line, table and field, and what was already applied.
    async fn apply(
        &self,
        file: Option<String>,
        text: Option<String>,
        dry_run: bool,
    ) -> Result<ApplyReport, String>;
}
