//! The TypeScript types of the browser client (`clients/wsnotify.d.ts`)
//! compile under `--strict` against every use in `clients/types-check.ts`,
//! with the TypeScript compiler CI installs (Debian's `node-typescript`).

use std::process::Command;

#[test]
fn the_client_types_compile_strictly() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("tsc")
        .args(["--noEmit", "--strict", "clients/types-check.ts"])
        .current_dir(root)
        .output()
        .expect("tsc (apt-get install node-typescript; scripts/test-deps.sh does)");
    assert!(
        out.status.success(),
        "tsc failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
