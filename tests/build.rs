//! Writes every ```rust block of README.md to `$OUT_DIR/readme_block_<n>.rs`, wrapped in
//! braces (a block expression), and their number to `$OUT_DIR/readme_blocks.rs`, so that
//! `readme.rs` compiles each block in a context of its own: the README cannot drift from the
//! API.

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    let readme = manifest.join("../README.md");
    println!("cargo::rerun-if-changed={}", readme.display());
    let text = std::fs::read_to_string(&readme).expect("README.md is readable");
    let mut lines = text.lines();
    let mut count = 0;
    while let Some(line) = lines.next() {
        if line.trim_end() != "```rust" {
            continue;
        }
        let mut block = String::from("{\n");
        for line in lines.by_ref().take_while(|line| !line.starts_with("```")) {
            block.push_str(line);
            block.push('\n');
        }
        block.push_str("}\n");
        let path = out.join(format!("readme_block_{count}.rs"));
        std::fs::write(path, block).expect("OUT_DIR is writable");
        count += 1;
    }
    let blocks = format!(
        "/// How many Rust blocks README.md has.\npub(crate) const COUNT: usize = {count};\n"
    );
    std::fs::write(out.join("readme_blocks.rs"), blocks).expect("OUT_DIR is writable");
}
