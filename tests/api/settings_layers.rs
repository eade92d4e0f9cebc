//! Settings layering through a real file: defaults < file < environment.

use openim_callback_receiver::settings::{EnvSource, Settings};
use std::collections::HashMap;
use std::time::Duration;

fn env(pairs: &[(&str, &str)]) -> EnvSource {
    EnvSource::Map(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<HashMap<_, _>>())
}

#[test]
fn a_file_overrides_defaults_and_the_environment_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("receiver.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"0.0.0.0:7000\"\nbase_path = \"/hooks\"\n\n[sinks.log]\nmax_content_chars = 80\n",
    )
    .unwrap();
    let settings =
        Settings::load(Some(&path), env(&[("OPENIM_CALLBACK__SERVER__LISTEN", "127.0.0.1:7001")])).unwrap();
    assert_eq!(settings.server.listen, "127.0.0.1:7001".parse().unwrap(), "environment wins");
    assert_eq!(settings.server.base_path, "/hooks", "file wins over defaults");
    assert_eq!(settings.sinks.log.max_content_chars, 80);
    assert_eq!(settings.server.response_timeout, Duration::from_secs(3), "defaults fill the rest");
}

#[test]
fn an_unknown_key_in_a_file_or_a_missing_file_stops_start_up_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.toml");
    std::fs::write(&path, "[sinks.log]\ninclude_contents = false\n").unwrap();
    let error = Settings::load(Some(&path), env(&[])).unwrap_err().to_string();
    assert!(error.contains("sinks.log") && error.contains("include_contents"), "{error}");

    let missing = Settings::load(Some(&dir.path().join("nope.toml")), env(&[])).unwrap_err().to_string();
    assert!(missing.contains("nope.toml"), "{missing}");
}
