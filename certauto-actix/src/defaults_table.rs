//! Checks this crate's rows of the table of defaults
//! (`certauto-core/src/defaults.md`, in certauto-core's docs and the README)
//! against the constants this crate's code reads; certauto-core's own test
//! checks the rest and leaves these rows to this one.

/// The table of defaults.
const TABLE: &str = include_str!("../../certauto-core/src/defaults.md");
/// The prefix of this crate's rows in the "constant" column.
const PREFIX: &str = "certauto_actix::";

/// `(constant, default)` of each row of the table naming this crate.
fn rows() -> Vec<(String, String)> {
    TABLE
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('|'))
        .filter_map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            let constant = cells.get(3)?.trim_matches('`');
            let stated = cells.get(1)?;
            constant
                .starts_with(PREFIX)
                .then(|| (constant.to_owned(), (*stated).to_owned()))
        })
        .collect()
}

#[test]
fn every_stated_default_is_the_constant_the_code_uses() {
    let checks = [(
        "certauto_actix::serve::MAX_WORKERS".to_owned(),
        crate::serve::MAX_WORKERS.to_string(),
    )];
    let rows = rows();
    for (constant, stated) in &rows {
        match checks.iter().find(|(c, _)| c == constant) {
            None => panic!("defaults.md names `{constant}`, which this test does not check"),
            Some((_, actual)) => assert_eq!(
                stated, actual,
                "defaults.md says {stated:?} for `{constant}`, but the code uses {actual:?}"
            ),
        }
    }
    for (constant, _) in &checks {
        assert!(
            rows.iter().any(|(c, _)| c == constant),
            "`{constant}` is checked but has no row in defaults.md"
        );
    }
}
