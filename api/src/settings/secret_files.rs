//! Secrets given as files (`EFMS_JWT_SECRET_FILE`, `EFMS_MASTER_KEY_FILE`), as orchestrators
//! mount them (`/run/secrets/…`), so that no secret needs to sit in an environment variable.

use super::invalid::{invalid, ConfigError};

/// The secret `value`, or else the content of `file` without its trailing line break; `None`
/// when neither is set. `setting` names the file's setting, `value_setting` the value's.
///
/// # Errors
/// When both are set, or the file cannot be read or is empty.
pub fn value_or_file(
    value_setting: &'static str,
    value: Option<&str>,
    setting: &'static str,
    file: Option<&str>,
) -> Result<Option<String>, ConfigError> {
    match (value, file) {
        (Some(_), Some(_)) => Err(invalid(
            setting,
            format!("{value_setting} is set too: set one of them"),
        )),
        (Some(value), None) => Ok(Some(value.to_owned())),
        (None, None) => Ok(None),
        (None, Some(path)) => {
            let content = std::fs::read_to_string(path)
                .map_err(|error| invalid(setting, format!("`{path}` cannot be read: {error}")))?;
            let secret = content.trim_end_matches(['\n', '\r']);
            if secret.is_empty() {
                return Err(invalid(setting, format!("`{path}` is empty")));
            }
            Ok(Some(secret.to_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::value_or_file;

    const VALUE: &str = "EFMS_X";
    const FILE: &str = "EFMS_X_FILE";

    #[test]
    fn a_secret_is_read_from_its_file_without_the_line_break() {
        let path = std::env::temp_dir().join(format!("efms-secret-{}", std::process::id()));
        std::fs::write(&path, "c2VjcmV0\n").unwrap();
        let read = value_or_file(VALUE, None, FILE, path.to_str()).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(read.as_deref(), Some("c2VjcmV0"));
        assert_eq!(
            value_or_file(VALUE, Some("v"), FILE, None)
                .unwrap()
                .as_deref(),
            Some("v")
        );
        assert_eq!(value_or_file(VALUE, None, FILE, None).unwrap(), None);
    }

    #[test]
    fn both_a_value_and_a_file_or_an_unreadable_file_name_the_file_setting() {
        let both = value_or_file(VALUE, Some("v"), FILE, Some("/x")).unwrap_err();
        assert_eq!(both.setting, FILE);
        assert!(both.reason.contains(VALUE), "{}", both.reason);
        let missing = value_or_file(VALUE, None, FILE, Some("/nonexistent/efms")).unwrap_err();
        assert_eq!(missing.setting, FILE);
        assert!(missing.reason.contains("/nonexistent/efms"));
    }
}
