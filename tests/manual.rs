//! The documents `vsplice generate` writes, checked with the tools a user reads them with:
//! the man page rendered by `man --warnings -l` (man-db and groff) at 80 columns with no
//! warning and its sections in socat's order; the completion scripts loaded by bash (and the
//! completion asked for a word), and parsed by zsh and fish. The tools come from the
//! machine when installed, or from Debian's packages unpacked into the labs' cache
//! (`common::debs`), so `cargo test` needs no install.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

fn generate(args: &[&str]) -> String {
    let out = Command::new(common::vsplice_bin())
        .arg("generate")
        .args(args)
        .output()
        .expect("running vsplice generate");
    assert!(
        out.status.success(),
        "vsplice generate {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// `text` written to a fresh file of the test's scratch folder.
fn scratch_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vsplice-manual-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// `man` with groff: the machine's when installed, else man-db and groff-base unpacked.
fn man() -> Command {
    if on_path("man") && on_path("groff") {
        return Command::new("man");
    }
    let debs = common::lab::deb_root();
    debs.ensure(&["man-db", "groff-base"])
        .unwrap_or_else(|e| panic!("man-db and groff-base: {e}"));
    // man-db keeps its own libraries in /usr/lib/man-db (its RUNPATH), which a machine
    // without man-db lacks: link them where the unpacked root's libraries are looked for.
    let private = debs.path("usr/lib/man-db");
    let shared = debs.path("usr/lib/x86_64-linux-gnu");
    std::fs::create_dir_all(&shared).unwrap();
    for lib in std::fs::read_dir(&private).unwrap().flatten() {
        let link = shared.join(lib.file_name());
        if lib.file_name().to_string_lossy().contains(".so") && !link.exists() {
            let _ = std::os::unix::fs::symlink(lib.path(), &link);
        }
    }
    let man = debs.path("usr/bin/man");
    for (binary, package) in [
        (man.clone(), "man-db"),
        (debs.path("usr/bin/troff"), "groff-base"),
        (debs.path("usr/bin/grotty"), "groff-base"),
        (debs.path("usr/bin/preconv"), "groff-base"),
    ] {
        debs.ensure_libraries(&binary, package)
            .unwrap_or_else(|e| panic!("{package}'s libraries: {e}"));
    }
    let mut cmd = Command::new(&man);
    let path = std::env::var("PATH").unwrap_or_default();
    cmd.env("PATH", format!("{}:{path}", debs.path("usr/bin").display()))
        .env("LD_LIBRARY_PATH", debs.library_path())
        .env("GROFF_FONT_PATH", debs.path("usr/share/groff/current/font"))
        .env("GROFF_TMAC_PATH", debs.path("usr/share/groff/current/tmac"))
        .arg("-C")
        .arg(debs.path("etc/manpath.config"));
    cmd
}

fn run(mut cmd: Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn the_man_page_renders_at_80_columns_without_warnings_in_socats_section_order() {
    let page = scratch_file("vsplice.1", &generate(&["man"]));
    let mut cmd = man();
    cmd.env("MANWIDTH", "80")
        .env("LANG", "C.UTF-8")
        .args(["--warnings", "-l"])
        .arg(&page);
    let out = run(cmd, "man --warnings -l");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.trim().is_empty(), "man warned:\n{stderr}");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut at = 0;
    for section in [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "ADDRESS TYPES",
        "ADDRESS OPTIONS",
        "GLOBAL OPTIONS",
        "SERVICE MODE",
        "BENCH",
        "EXAMPLES",
        "EXIT STATUS",
        "SIGNALS",
    ] {
        let found = lines[at..]
            .iter()
            .position(|l| *l == section)
            .unwrap_or_else(|| panic!("section {section} missing or out of order:\n{text}"));
        at += found + 1;
    }
    let width = lines.iter().map(|l| l.chars().count()).max().unwrap();
    assert!(width <= 80, "a line of {width} columns");
    // Text that clap_mangen and the grammar's tables put there.
    for needle in [
        "--drain-timeout",
        "VSOCK-UDS-LISTEN:path:port",
        "max-children=N",
    ] {
        assert!(text.contains(needle), "the page lacks {needle}");
    }
}

fn bash_completion() -> PathBuf {
    scratch_file("vsplice.bash", &generate(&["completions", "bash"]))
}

#[test]
fn the_bash_completion_parses_registers_itself_and_completes_subcommands_and_flags() {
    let script = bash_completion();
    let mut check = Command::new("bash");
    check.arg("-n").arg(&script);
    run(check, "bash -n");
    let mut load = Command::new("bash");
    load.arg("-c")
        .arg(
            r#"source "$1" && complete -p vsplice &&
               COMP_WORDS=(vsplice gen); COMP_CWORD=1; COMP_LINE="vsplice gen"; COMP_POINT=11
               _vsplice vsplice gen vsplice && echo "words: ${COMPREPLY[*]}"
               COMP_WORDS=(vsplice --drain); COMP_CWORD=1
               _vsplice vsplice --drain vsplice && echo "flags: ${COMPREPLY[*]}"
               COMP_WORDS=(vsplice generate completions ""); COMP_CWORD=3
               _vsplice vsplice "" completions && echo "shells: ${COMPREPLY[*]}""#,
        )
        .arg("bash")
        .arg(&script);
    let out = String::from_utf8(run(load, "bash: source, complete -p").stdout).unwrap();
    assert!(
        out.lines()
            .next()
            .unwrap_or_default()
            .starts_with("complete ")
            && out.lines().next().unwrap().trim_end().ends_with(" vsplice"),
        "complete -p vsplice:\n{out}"
    );
    assert!(out.contains("words: generate"), "{out}");
    assert!(out.contains("flags: --drain-timeout"), "{out}");
    assert!(out.contains(" bash zsh fish"), "{out}");
}

/// A shell from the machine, or from its Debian package unpacked into the labs' cache.
fn shell(name: &str, package_path: &str) -> Command {
    if on_path(name) {
        return Command::new(name);
    }
    common::debs::tool(name, package_path).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn the_zsh_completion_parses_in_zsh() {
    let script = scratch_file("_vsplice", &generate(&["completions", "zsh"]));
    assert!(
        std::fs::read_to_string(&script)
            .unwrap()
            .starts_with("#compdef vsplice")
    );
    let mut cmd = shell("zsh", "bin/zsh");
    cmd.arg("-n").arg(&script);
    run(cmd, "zsh -n");
}

#[test]
fn the_fish_completion_parses_in_fish_and_names_the_flags() {
    let text = generate(&["completions", "fish"]);
    assert!(text.contains("complete -c vsplice") && text.contains("-l drain-timeout"));
    let script = scratch_file("vsplice.fish", &text);
    let mut cmd = shell("fish", "usr/bin/fish");
    cmd.arg("--no-execute").arg(&script);
    run(cmd, "fish --no-execute");
}

/// A broken script is caught: the checks above can fail.
#[test]
fn a_completion_script_with_a_syntax_error_fails_the_checks() {
    let broken = scratch_file("broken.bash", "_vsplice() { if then; }\n");
    let out = Command::new("bash")
        .arg("-n")
        .arg(&broken)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let page = scratch_file("broken.1", ".TH X 1\n.SH NAME\n.BOGUS macro\n\\fQ x\n");
    let mut cmd = man();
    cmd.env("MANWIDTH", "80")
        .args(["--warnings", "-l"])
        .arg(&page);
    let out = cmd.output().unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stderr).trim().is_empty(),
        "man reported nothing about a broken page"
    );
}

#[test]
fn a_shell_that_is_not_offered_is_a_usage_error_naming_it() {
    let out = Command::new(common::vsplice_bin())
        .args(["generate", "completions", "powershell"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("powershell") && stderr.contains("bash, zsh, fish"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}
