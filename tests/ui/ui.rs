//! Compile-time checks of the saga DSL and derives: each `ui/fail` case must fail with the
//! error in its `.stderr`; each `ui/pass` case must compile and run. This is a package of its
//! own so that trybuild builds the cases against saga-core alone, not the integration tests'
//! dependencies (sqlx, the FTGO example, …).

#[test]
fn dsl_and_derives() {
    let cases = trybuild::TestCases::new();
    cases.pass("pass/*.rs");
    cases.compile_fail("fail/*.rs");
}
