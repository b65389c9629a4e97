//! Compile-time checks of the saga DSL and derives: each `ui/fail` case must fail with the
//! error in its `.stderr`; each `ui/pass` case must compile and run.

#[test]
fn dsl_and_derives() {
    let cases = trybuild::TestCases::new();
    cases.pass("ui/pass/*.rs");
    cases.compile_fail("ui/fail/*.rs");
}
