//! The README shows both FTGO sagas' graphs; they must stay equal to what the code renders
//! (and so to the snapshot tests).

use saga_core::{Saga, SagaDefinition};

fn assert_readme_shows<D>(definition: &SagaDefinition<D>) {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md is readable");
    let graph = definition.to_mermaid();
    let block = format!("```mermaid\n{graph}```");
    assert!(
        readme.contains(&block),
        "README.md's mermaid block for {} differs from to_mermaid():\n{graph}",
        definition.name()
    );
}

#[test]
fn readme_shows_the_current_create_order_graph() {
    assert_readme_shows(ftgo::create_order::CreateOrderSaga::definition());
}

#[test]
fn readme_shows_the_current_cancel_order_graph() {
    assert_readme_shows(ftgo::cancel_order::CancelOrderSaga::definition());
}
