//! Settings from the environment, in a test process of their own: figment's `Jail` changes the
//! whole process's environment, which other tests read (the SM4 and SM3 paths, temporary folders).

use kaibiao::config::Settings;

#[test]
// `Jail::expect_with` takes figment's own `Result`, whose error is large.
#[allow(clippy::result_large_err)]
fn variables_that_are_no_settings_are_let_be_and_a_misspelt_setting_is_refused() {
    figment::Jail::expect_with(|jail| {
        jail.clear_env();
        jail.set_env("KAIBIAO_TRUSTED_PROXIES", "[127.0.0.1, 192.168.0.0/16]");
        for (name, value) in [
            ("KAIBIAO_SM4", "portable"),
            ("KAIBIAO_SM3", "portable"),
            ("KAIBIAO_AGENT_PASSWORD", "a password"),
            ("KAIBIAO_TEST_POSTGRES_URL", "postgres://x@y/z"),
            ("KAIBIAO_BENCH_MIB", "64"),
        ] {
            jail.set_env(name, value);
        }
        let settings = Settings::load(None).unwrap();
        assert_eq!(settings.trusted_proxies.len(), 2);
        jail.set_env("KAIBIAO_TRUSTED_PROXY", "[127.0.0.1]");
        let refused = Settings::load(None).unwrap_err().to_string();
        assert!(refused.contains("trusted_proxy"), "{refused}");
        Ok(())
    });
}
