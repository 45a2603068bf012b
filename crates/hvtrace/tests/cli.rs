//! `--help` teaches: every subcommand has its own one-line description.

use std::process::Command;

#[test]
fn every_subcommand_describes_itself() {
    let out = Command::new(env!("CARGO_BIN_EXE_hvtrace")).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let commands: Vec<(&str, &str)> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.trim().split_once(' ').map(|(c, d)| (c, d.trim())))
        .collect();
    let names: Vec<&str> = commands.iter().map(|c| c.0).collect();
    for want in
        ["demo", "sim", "kvm", "consume", "create", "start", "stop", "destroy", "status", "flush", "check", "import"]
    {
        assert!(names.contains(&want), "{want} missing from --help:\n{help}");
    }
    for (i, (c, d)) in commands.iter().enumerate() {
        assert!(d.len() > 15, "{c}: no real description: {d:?}");
        for (c2, d2) in &commands[i + 1..] {
            assert_ne!(d, d2, "{c} and {c2} share a description");
        }
    }
}
