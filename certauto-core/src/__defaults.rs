//! Not public API: the check certauto-tower and certauto-actix run on their
//! own rows of the table of defaults (`defaults.md`, in this crate's docs and
//! the README); this crate's own test checks the other rows.

/// The table of defaults.
const TABLE: &str = include_str!("defaults.md");

/// Checks the rows of the table whose constant column starts with `prefix`
/// against `checks` (a constant's path and its value written as the table
/// writes it): every such row has a check, every check has a row, and the
/// stated default is the value. Panics naming the row otherwise (it is
/// meant for tests).
pub fn check_rows(prefix: &str, checks: &[(&str, String)]) {
    let rows: Vec<(&str, &str)> = TABLE
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('|'))
        .filter_map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            let constant = cells.get(3)?.trim_matches('`');
            let stated = *cells.get(1)?;
            constant.starts_with(prefix).then_some((constant, stated))
        })
        .collect();
    for (constant, stated) in &rows {
        match checks.iter().find(|(c, _)| c == constant) {
            None => panic!("defaults.md names `{constant}`, which this test does not check"),
            Some((_, actual)) => assert_eq!(
                stated, actual,
                "defaults.md says {stated:?} for `{constant}`, but the code uses {actual:?}"
            ),
        }
    }
    for (constant, _) in checks {
        assert!(
            rows.iter().any(|(c, _)| c == constant),
            "`{constant}` is checked but has no row in defaults.md"
        );
    }
}
