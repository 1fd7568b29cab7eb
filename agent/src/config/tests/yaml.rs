//! The YAML tree: syntax, features outside the configuration, the core schema.

use std::path::Path;

use super::super::yaml::{self, Scalar, Value};
use super::{HEAD, ok, problem, problems};

#[test]
fn yaml_features_outside_the_config_are_refused() {
    assert_eq!(
        problem(&format!("{HEAD}volumes: &v []\nx: *v\n")),
        "5:4: (document): YAML aliases (`*name`) are not supported here"
    );
    assert_eq!(
        problem(&format!("{HEAD}state_dir: !path /x\n")),
        "4:12: (document): YAML tag `!path` is not supported here"
    );
    assert_eq!(
        ok(&format!("{HEAD}state_dir: !!str /x\n")).state_dir,
        Path::new("/x")
    );
}

#[test]
fn syntax_errors_end_the_report() {
    let found = problems("version: 2\nsite: [\nunknown: 1\n");
    assert_eq!(found.len(), 1);
    assert!(
        found[0].contains(": (document): YAML syntax error: "),
        "{found:?}"
    );
}

#[test]
fn scalars_follow_the_core_schema() {
    let kind = |text: &str| match yaml::parse(&format!("k: {text}\n"))
        .expect("yaml")
        .map(|n| n.value)
    {
        Some(Value::Map(entries)) => match &entries[0].1.value {
            Value::Scalar(_, kind) => *kind,
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    for null in ["", "~", "null", "NULL"] {
        assert_eq!(kind(null), Scalar::Null, "{null}");
    }
    assert_eq!(kind("False"), Scalar::Bool);
    assert_eq!(kind("yes"), Scalar::Str);
    assert_eq!(kind("+12"), Scalar::Int(Some(12)));
    assert_eq!(kind("0o17"), Scalar::Int(Some(15)));
    assert_eq!(kind("0xff"), Scalar::Int(Some(255)));
    assert_eq!(kind(&"9".repeat(60)), Scalar::Int(None));
    for float in ["1.5", "-1.", ".5", "1e3", "2.5E-2", "-.inf", ".NaN"] {
        assert_eq!(kind(float), Scalar::Float, "{float}");
    }
    for string in [".", "1.2.3", "1e", "0x", "12abc", "-x", "/dev/vdb"] {
        assert_eq!(kind(string), Scalar::Str, "{string}");
    }
    assert_eq!(kind("'12'"), Scalar::Quoted);
    assert_eq!(kind("|\n  12"), Scalar::Quoted);
}
