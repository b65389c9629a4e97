//! The README shows CreateOrderSaga's graph; it must stay equal to what the code renders
//! (and so to the snapshot test).

use saga_core::Saga;

#[test]
fn readme_shows_the_current_create_order_graph() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md is readable");
    let graph = ftgo::create_order::CreateOrderSaga::definition().to_mermaid();
    let block = format!("```mermaid\n{graph}```");
    assert!(
        readme.contains(&block),
        "README.md's mermaid block differs from CreateOrderSaga::definition().to_mermaid():\n{graph}"
    );
}
