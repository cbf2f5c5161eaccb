//! Builds corral-guest (`guest/`, docs/qemu.md "The guest") into `$OUT_DIR/corral-guest.bin`,
//! the flat multiboot image the QEMU driver boots. It is a few KiB of freestanding C and
//! assembly built with the C compiler and binutils that a Rust build on Linux already has
//! (`scripts/setup.sh` makes sure of them); nothing is downloaded.

use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCES: [&str; 3] = ["guest/guest.c", "guest/boot.S", "guest/link.ld"];

fn main() {
    for source in SOURCES {
        println!("cargo:rerun-if-changed={source}");
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let guest = Path::new("guest");
    let object = |name: &str| out.join(name).to_string_lossy().into_owned();
    run(Command::new("cc").args([
        "-m64",
        "-ffreestanding",
        "-fno-pic",
        "-fno-pie",
        "-mno-red-zone",
        "-mgeneral-regs-only",
        "-fno-stack-protector",
        "-fno-asynchronous-unwind-tables",
        "-nostdlib",
        "-O2",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-c",
        &guest.join("guest.c").to_string_lossy(),
        "-o",
        &object("guest.o"),
    ]));
    run(Command::new("as").args([
        "--64",
        &guest.join("boot.S").to_string_lossy(),
        "-o",
        &object("boot.o"),
    ]));
    run(Command::new("ld").args([
        "-m",
        "elf_x86_64",
        "-no-pie",
        "-z",
        "noexecstack",
        "--no-warn-rwx-segments",
        "-T",
        &guest.join("link.ld").to_string_lossy(),
        "-o",
        &object("corral-guest.elf"),
        &object("boot.o"),
        &object("guest.o"),
    ]));
    run(Command::new("objcopy").args([
        "-O",
        "binary",
        &object("corral-guest.elf"),
        &object("corral-guest.bin"),
    ]));
}

fn run(command: &mut Command) {
    let program = command.get_program().to_string_lossy().into_owned();
    let status = command.status().unwrap_or_else(|error| {
        panic!(
            "building corral-guest: cannot run `{program}` ({error}); it comes with Debian's \
             gcc and binutils (scripts/setup.sh installs them)"
        )
    });
    assert!(
        status.success(),
        "building corral-guest: `{program}` failed: {status}"
    );
}
