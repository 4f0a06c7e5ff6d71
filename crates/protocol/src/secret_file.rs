//! Secrets read from files, as Docker and Kubernetes mount them (`/run/secrets/<name>`), for
//! the `--token-file` flags of both binaries: one rule, so that a token the sidecar reads is
//! the token the registry reads.

use std::path::Path;

/// The file's text without one trailing newline (`echo` and editors add one). Empty,
/// unreadable, or with other white space around it, it is refused with a message that starts
/// with `flag`: the registry matches the `Authorization` header's token exactly, so a token
/// with a stray space would never match.
pub fn read_secret_file(flag: &str, path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{flag}: cannot read {}: {e}", path.display()))?;
    let secret = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if secret.trim().is_empty() {
        return Err(format!("{flag}: {} is empty", path.display()));
    }
    if secret.trim() != secret {
        return Err(format!(
            "{flag}: {} has white space around the secret (only one trailing newline is ignored)",
            path.display()
        ));
    }
    Ok(secret.to_string())
}
