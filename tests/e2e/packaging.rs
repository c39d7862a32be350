//! Deployment artefacts, checked with the tools operators' pipelines use: systemd-analyze
//! (verify, and the security exposure score), cloud-init's schema check, cfn-lint, and
//! cargo-deb. scripts/install-deps.sh installs them.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (scripts/install-deps.sh installs it)")
    });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn systemd_unit_verifies_and_its_exposure_is_at_most_2() {
    let unit = std::fs::read_to_string(repo().join("systemd/s3drop.service")).unwrap();
    for needle in [
        "Type=notify",
        "WatchdogSec=",
        "ExecStartPre=/usr/bin/s3drop validate",
        "StateDirectory=s3drop",
        "User=s3drop",
        "Restart=on-failure",
    ] {
        assert!(unit.contains(needle), "unit lacks {needle}");
    }
    // Verify with the binary that was just built in place of /usr/bin/s3drop.
    let dir = tempfile::tempdir().unwrap();
    let unit_path = dir.path().join("s3drop.service");
    std::fs::write(&unit_path, unit.replace("/usr/bin/s3drop", S3DROP)).unwrap();
    let (ok, text) = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit_path));
    assert!(
        ok && text.trim().is_empty(),
        "systemd-analyze verify: {text}"
    );

    let (_, text) = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(&unit_path));
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for s3drop.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in: {text}"));
    println!("systemd-analyze security: exposure {score}");
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{text}");
}

#[test]
fn cloud_init_user_data_is_valid_and_its_script_parses() {
    let file = repo().join("cloud-init/user-data.yaml");
    let (ok, text) = run(Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(&file));
    println!("cloud-init schema: {}", text.trim());
    assert!(ok && text.contains("Valid"), "{text}");

    // The bootstrap script: POSIX sh syntax, `set -eu`, absolute paths for every command.
    let yaml = std::fs::read_to_string(&file).unwrap();
    let start = yaml.find("#!/bin/sh").unwrap();
    let script: String = yaml[start..]
        .lines()
        .take_while(|l| !l.starts_with("runcmd:"))
        .map(|l| format!("{}\n", l.strip_prefix("      ").unwrap_or(l)))
        .collect();
    let path = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(path.path(), &script).unwrap();
    let (ok, text) = run(Command::new("sh").arg("-n").arg(path.path()));
    assert!(ok, "sh -n: {text}\n{script}");
    assert!(script.contains("set -eu"));
    for tool in ["curl", "apt-get", "systemctl", "s3drop", "runuser", "tee"] {
        assert!(
            script.contains(&format!("/{tool} ")),
            "{tool} is called by absolute path"
        );
        for line in script.lines() {
            let bare = line.trim_start().starts_with(&format!("{tool} "));
            assert!(!bare, "{tool} called without its path: {line}");
        }
    }
}

#[test]
fn cloudformation_template_lints_clean_and_carries_the_cloud_init_verbatim() {
    let template = repo().join("cloudformation/s3drop.yaml");
    let (ok, text) = run(Command::new("cfn-lint").arg(&template));
    println!("cfn-lint: {}", if ok { "no errors" } else { text.as_str() });
    assert!(ok, "cfn-lint: {text}");

    let tmpl = std::fs::read_to_string(&template).unwrap();
    let user_data = std::fs::read_to_string(repo().join("cloud-init/user-data.yaml")).unwrap();
    for line in user_data.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            tmpl.contains(&format!("                {line}\n")),
            "the template's UserData differs from cloud-init/user-data.yaml at: {line}"
        );
    }
    // Least privilege as documented in docs/IAM.md.
    for needle in [
        "HttpTokens: required",
        "Action: sts:AssumeRole\n            Resource: !GetAtt UploadRole.Arn",
        "AWS: !GetAtt InstanceRole.Arn",
        "Action:\n                  - s3:PutObject\n                  - s3:AbortMultipartUpload\n                Resource: !Sub \"${DropBucket.Arn}/*\"",
        "AbortIncompleteMultipartUpload:",
        "BlockPublicPolicy: true",
        "SSEAlgorithm: AES256",
    ] {
        assert!(tmpl.contains(needle), "template lacks {needle}");
    }
    assert_eq!(
        tmpl.matches("Effect: Allow").count(),
        5,
        "two trusts, two permissions, and the KMS key's use only when a key is given"
    );
    assert!(tmpl.contains("- EncryptWithKms\n                - Sid: UseTheDropKey"));
}

#[test]
fn debian_package_holds_binary_unit_example_and_docs() {
    let out = tempfile::tempdir().unwrap();
    let deb = debug_deb(out.path());
    let (ok, listing) = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    assert!(ok, "{listing}");
    for path in [
        "./usr/bin/s3drop",
        "./usr/lib/systemd/system/s3drop.service",
        "./usr/share/doc/s3drop/examples/s3drop.toml",
        "./usr/share/doc/s3drop/README.md",
        "./usr/share/doc/s3drop/IAM.md",
        "./usr/share/doc/s3drop/examples/cloud-init-user-data.yaml",
    ] {
        assert!(listing.contains(path), "{path} missing:\n{listing}");
    }
    let (ok, fields) = run(Command::new("dpkg-deb").arg("-f").arg(&deb));
    assert!(
        ok && fields.contains("Package: s3drop")
            && fields.contains("adduser")
            && fields.contains("acl"),
        "{fields}"
    );

    let control = out.path().join("control");
    let (ok, text) = run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    assert!(ok, "{text}");
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    assert!(postinst.contains("adduser --system --group"), "{postinst}");
    assert!(
        postinst.contains("setfacl -m g:s3drop:rwx -d -m g:s3drop:rwx /var/spool/s3drop"),
        "producers' subdirectories stay writable for s3drop: {postinst}"
    );
    assert!(
        postinst.contains("deb-systemd-helper"),
        "unit registered: {postinst}"
    );
    assert!(
        !postinst.contains("deb-systemd-invoke start"),
        "not started before a config exists"
    );
    let postrm = std::fs::read_to_string(control.join("postrm")).unwrap();
    assert!(postrm.contains("purge") && postrm.contains("/var/lib/s3drop"));
    for script in ["postinst", "postrm", "prerm"] {
        let (ok, text) = run(Command::new("sh").arg("-n").arg(control.join(script)));
        assert!(ok, "{script}: {text}");
    }

    // The packaged binary is the real one.
    let unpacked = out.path().join("root");
    let (ok, text) = run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked));
    assert!(ok, "{text}");
    let (ok, version) = run(Command::new(unpacked.join("usr/bin/s3drop")).arg("--version"));
    assert!(ok && version.starts_with("s3drop "), "{version}");
    println!(
        "debian package: {} ({})",
        deb.file_name().unwrap().to_string_lossy(),
        version.trim()
    );
}

#[test]
fn example_config_validates() {
    let (ok, text) = run(Command::new(S3DROP)
        .args(["validate", "--config"])
        .arg(Path::new(&repo()).join("examples/s3drop.toml")));
    assert!(ok, "{text}");
}
