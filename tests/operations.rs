//! What operators install: shell completions, manual pages, the systemd unit and the example
//! config in contrib/, each checked with the tools that will consume it.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{ServerProcess, run_cli, stderr, stdout};
use serde::Deserialize;
use sockit::server::Settings;
use sockit::{Secret, ServerConfig};

const SHELLS: [&str; 5] = ["bash", "zsh", "fish", "elvish", "powershell"];

fn contrib(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib").join(name)
}

/// The top-level subcommands as `sockit --help` lists them: clap's own rendering, independent
/// of the completion and manual page generators under test.
fn subcommands() -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let help = stdout(&run_cli(dir.path(), &["--help"]));
    let names: Vec<String> = help
        .lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect();
    assert!(names.len() > 10, "{help}");
    names
}

fn is_installed(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !found {
        eprintln!("SKIPPED: {tool} is not installed (.ci/run installs it)");
    }
    found
}

#[test]
fn completion_scripts_name_every_subcommand_in_every_shell() {
    let dir = tempfile::tempdir().unwrap();
    let subcommands = subcommands();
    for shell in SHELLS {
        let output = run_cli(dir.path(), &["completions", shell]);
        assert!(output.status.success(), "{shell}: {}", stderr(&output));
        let script = stdout(&output);
        for name in &subcommands {
            assert!(script.contains(name.as_str()), "{shell} script lacks `{name}`");
        }
    }
    let output = run_cli(dir.path(), &["completions", "tcsh"]);
    assert_eq!(output.status.code(), Some(2), "an unknown shell is a usage error");
}

/// The bash script parses, and completing in a real bash offers what a user would expect.
#[test]
fn bash_completes_subcommands_flags_and_shell_names() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("sockit.bash");
    std::fs::write(&script, run_cli(dir.path(), &["completions", "bash"]).stdout).unwrap();
    let syntax = Command::new("bash").arg("-n").arg(&script).output().unwrap();
    assert!(syntax.status.success(), "{}", stderr(&syntax));

    // bash calls a completion function with the command, the word being completed and the
    // word before it, after setting COMP_WORDS and COMP_CWORD.
    let complete = |words: &[&str]| -> Vec<String> {
        let cword = words.len() - 1;
        let quoted: Vec<String> = words.iter().map(|word| format!("'{word}'")).collect();
        let program = format!(
            "source '{}'; COMP_WORDS=({}); COMP_CWORD={cword}; _sockit sockit '{}' '{}'; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display(),
            quoted.join(" "),
            words[cword],
            words[cword - 1],
        );
        let output = Command::new("bash").args(["-c", &program]).output().unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        stdout(&output).lines().map(str::to_owned).collect()
    };
    assert_eq!(complete(&["sockit", "se"]), ["serve"]);
    assert!(complete(&["sockit", "serve", "--allow"]).contains(&"--allow-exec".to_owned()));
    let mut shells = complete(&["sockit", "completions", ""]);
    shells.retain(|word| !word.starts_with('-'));
    shells.sort();
    let mut expected = SHELLS.to_vec();
    expected.sort();
    assert_eq!(shells, expected);
}

#[test]
fn the_manual_page_renders_and_lists_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_cli(dir.path(), &["man"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let roff = stdout(&output);
    assert!(roff.contains(".TH sockit 1"), "{roff}");
    for section in [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "OPTIONS",
        "SUBCOMMANDS",
        "EXAMPLES",
    ] {
        assert!(
            roff.contains(&format!(".SH {section}")),
            "no {section} in:\n{roff}"
        );
    }
    let page = if is_installed("groff") {
        render(&dir.path().join("sockit.1"), &roff)
    } else {
        roff.replace("\\-", "-") // the roff source, its escaped hyphens read as hyphens
    };
    for name in subcommands() {
        assert!(
            page.contains(&format!("sockit-{name}(1)")),
            "sockit-{name}(1) missing:\n{page}"
        );
    }
    assert!(
        page.contains("sockit serve"),
        "the examples are on the page:\n{page}"
    );
}

/// Renders a page as `man` would, failing on any groff warning.
fn render(path: &Path, roff: &str) -> String {
    std::fs::write(path, roff).unwrap();
    let output = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-P", "-cbou"])
        .arg(path)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stderr(&output), "", "groff warnings for {}", path.display());
    let text = stdout(&output);
    assert!(text.contains("NAME") && text.contains("SYNOPSIS"), "{text}");
    text
}

#[test]
fn man_dir_writes_one_page_per_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let pages = dir.path().join("share/man/man1");
    let output = run_cli(dir.path(), &["man", "--dir", pages.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let mut expected: Vec<String> = subcommands()
        .iter()
        .map(|name| format!("sockit-{name}"))
        .collect();
    expected.push("sockit".into());
    for title in expected {
        let path = pages.join(format!("{title}.1"));
        let roff = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(roff.contains(&format!(".TH {title} 1 ")), "{roff}");
        assert!(roff.contains(".SH SYNOPSIS"), "{roff}");
        if title == "sockit-serve" {
            assert!(roff.contains("\\-\\-allow\\-exec"), "{roff}");
        }
    }
}

/// The keys [`Settings`] accepts, as its `Deserialize` derive lists them: a key added to the
/// struct shows up here without anyone updating this test.
fn file_config_keys() -> &'static [&'static str] {
    use serde::de::{Error, Visitor};

    struct Keys(Option<&'static [&'static str]>);

    impl<'de> serde::Deserializer<'de> for &mut Keys {
        type Error = serde::de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            self.0 = Some(fields);
            Err(Error::custom("field names taken"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }

    let mut keys = Keys(None);
    let _ = Settings::deserialize(&mut keys);
    keys.0.expect("Settings deserializes as a struct")
}

#[test]
fn the_example_config_documents_every_key_with_a_valid_value() {
    let example = std::fs::read_to_string(contrib("sockit.toml")).unwrap();
    let keys = file_config_keys();
    assert!(
        keys.contains(&"listen") && keys.contains(&"exec_grace"),
        "{keys:?}"
    );
    for key in keys {
        let setting = example
            .lines()
            .filter(|line| {
                let line = line.strip_prefix("# ").unwrap_or(line);
                line.starts_with(&format!("{key} = "))
            })
            .count();
        assert_eq!(
            setting, 1,
            "contrib/sockit.toml should set `{key}` once (or show it commented out)"
        );
    }
    // The keys shown commented out must be valid too: uncommented, the file still loads.
    let uncommented: String = example
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(setting) if keys.iter().any(|key| setting.starts_with(&format!("{key} = "))) => setting,
            _ => line,
        })
        .map(|line| format!("{line}\n"))
        .collect();
    let all: Settings = toml::from_str(&uncommented).unwrap_or_else(|e| panic!("{e}"));
    assert!(all.quota.is_some() && all.listen.is_some());
}

/// The example sets every key it sets to the built-in default, but for the two paths into the
/// service's state directory: applied, it leaves the server's defaults as they were.
#[test]
fn the_example_config_sets_the_built_in_defaults() {
    let example = Settings::load(&contrib("sockit.toml")).unwrap();
    let defaults = ServerConfig::new(Secret::generate());
    let mut config = defaults.clone();
    example.apply(&mut config);
    assert_eq!(config.services.files.root, Path::new("/var/lib/sockit/files"));
    config
        .services
        .files
        .root
        .clone_from(&defaults.services.files.root);
    assert_eq!(format!("{config:?}"), format!("{defaults:?}"));
    assert_eq!(example.log_format.as_deref(), Some("text"));
}

/// The unit's own command lines, with its specifiers pointed at temporary directories: the
/// first start creates the secret, later ones keep it, and the server runs with the example
/// config (its addresses and paths overridden by flags, as the test must not bind 8080).
#[test]
fn the_units_commands_create_the_secret_once_and_serve_the_example_config() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("var/lib");
    let config = dir.path().join("etc");
    std::fs::create_dir_all(state.join("sockit")).unwrap();
    std::fs::create_dir_all(config.join("sockit")).unwrap();
    std::fs::copy(contrib("sockit.toml"), config.join("sockit/sockit.toml")).unwrap();
    let unit = std::fs::read_to_string(contrib("sockit.service")).unwrap();
    let command = |key: &str| {
        let line = unit
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in the unit"));
        line.replace("/usr/local/bin/sockit", common::SOCKIT)
            .replace("%S", state.to_str().unwrap())
            .replace("%E", config.to_str().unwrap())
    };

    // Its quoting is the shell's, so sh runs the line as systemd would.
    let create_secret = || {
        let output = Command::new("sh")
            .args(["-c", &command("ExecStartPre")])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
    };
    let secret_file = state.join("sockit/secret");
    create_secret();
    let mode = std::fs::metadata(&secret_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let secret = std::fs::read(&secret_file).unwrap();
    create_secret();
    assert_eq!(
        std::fs::read(&secret_file).unwrap(),
        secret,
        "a restart keeps the secret"
    );

    let root = state.join("sockit/files");
    let exec_start = command("ExecStart");
    let mut args: Vec<&str> = exec_start.split_whitespace().skip(1).collect();
    let secret_arg = secret_file.to_str().unwrap();
    args.extend(["--listen", "127.0.0.1:0", "--secret-file", secret_arg]);
    args.extend(["--root", root.to_str().unwrap(), "--time-listen", "off"]);
    let home = tempfile::tempdir().unwrap();
    let server = ServerProcess::spawn(home, secret_file.clone(), &args);
    assert!(server.wait_for_log(&format!("file root {}", root.display())));
    let output = server.cli(&["echo", &server.addr, "configured"]);
    assert_eq!(stdout(&output), "CONFIGURED\n", "{}", stderr(&output));
    let output = server.cli(&["exec", &server.addr, "true"]);
    assert!(
        stderr(&output).contains("disabled"),
        "allow_exec = false in the example: {}",
        stderr(&output)
    );
    assert!(server.terminate().success());
}

#[test]
fn systemd_accepts_the_unit() {
    if !is_installed("systemd-analyze") || !is_installed("man") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The unit documents itself as man:sockit-serve(1); verify checks that page exists, so
    // install the pages where man will look.
    let pages = dir.path().join("man/man1");
    assert!(
        run_cli(dir.path(), &["man", "--dir", pages.to_str().unwrap()])
            .status
            .success()
    );
    // verify also checks that ExecStart's program exists: point it at the one under test.
    let unit = std::fs::read_to_string(contrib("sockit.service"))
        .unwrap()
        .replace("/usr/local/bin/sockit", common::SOCKIT);
    let path = dir.path().join("sockit.service");
    std::fs::write(&path, unit).unwrap();
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .env("MANPATH", dir.path().join("man"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}{}", stdout(&output), stderr(&output));
    assert_eq!(stderr(&output), "", "systemd-analyze verify warns");
}
