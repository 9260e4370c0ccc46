"""The MCU targets: compilers, flags, QEMU machines (recipe: shared/MCU.md, checked on Debian 12)."""
from __future__ import annotations

import functools
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ._paths import csrc_dir

# Every build: C99, no FP contraction (fused multiply-add would change bits between targets),
# warnings are errors, dead code and data removed at link time.
COMMON_CFLAGS = [
    "-std=c99", "-O2", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror", "-pedantic", "-Wdouble-promotion",
    "-ffunction-sections", "-fdata-sections",
]
COMMON_LDFLAGS = ["-Wl,--gc-sections"]
QEMU_COMMON = ["-nographic", "-monitor", "none", "-serial", "none", "-semihosting-config", "enable=on,target=native"]

_RV_LINK = ["--crt0=semihost", "--oslib=semihost",
            "-Wl,--defsym=__flash=0x80000000,--defsym=__flash_size=0x100000,"
            "--defsym=__ram=0x80100000,--defsym=__ram_size=0x100000"]


@dataclass(frozen=True)
class Target:
    """One build + run configuration.

    ``mode``: ``native`` (run the host binary), ``qemu`` (semihosting under QEMU) or ``compile``
    (compile-only check of the library).
    """

    name: str
    description: str
    cc: str
    arch_flags: tuple = ()
    link_flags: tuple = ()
    startup: tuple = ()  # extra sources relative to csrc/mcu/targets
    linker_script: str | None = None  # relative to csrc/mcu/targets
    qemu: tuple = ()
    mode: str = "qemu"
    fpu: bool = False
    tools_prefix: str = ""
    cmake_toolchain: str | None = None  # csrc/mcu/targets/<file> for CMake users
    extra: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def size_tool(self) -> str:
        return (self.tools_prefix + "size") if self.tools_prefix else "size"

    @property
    def nm_tool(self) -> str:
        return (self.tools_prefix + "nm") if self.tools_prefix else "nm"

    def missing(self) -> list[str]:
        """Executables (and libraries) this target needs that are not installed."""
        need = [self.cc]
        if self.mode == "qemu":
            need.append(self.qemu[0])
        out = [n for n in need if shutil.which(n) is None]
        if not out and self.name.startswith("rv32") and not _picolibc_present():
            out.append("picolibc-riscv64-unknown-elf")
        if not out and self.name.startswith("cortex") and not _rdimon_present(self.cc):
            out.append("libnewlib-arm-none-eabi")
        return out

    @property
    def available(self) -> bool:
        return not self.missing()

    @property
    def runnable(self) -> bool:
        return self.mode in ("native", "qemu")

    def compile_flags(self) -> list[str]:
        return list(self.arch_flags) + COMMON_CFLAGS

    def link_args(self) -> list[str]:
        t = csrc_dir() / "targets"
        args = list(self.link_flags)
        if self.linker_script:
            args += ["-T", str(t / self.linker_script)]
        return args + COMMON_LDFLAGS

    def startup_sources(self) -> list[Path]:
        t = csrc_dir() / "targets"
        return [t / s for s in self.startup]

    def qemu_command(self, elf: Path) -> list[str]:
        return list(self.qemu) + QEMU_COMMON + ["-kernel", str(elf)]


@functools.lru_cache(maxsize=None)
def _picolibc_present() -> bool:
    cc = shutil.which("riscv64-unknown-elf-gcc")
    if cc is None:
        return False
    out = subprocess.run([cc, "-print-file-name=picolibc.specs"], capture_output=True, text=True, timeout=30)
    return out.returncode == 0 and Path(out.stdout.strip()).is_absolute()


@functools.lru_cache(maxsize=None)
def _rdimon_present(cc: str) -> bool:
    exe = shutil.which(cc)
    if exe is None:
        return False
    out = subprocess.run([exe, "-mcpu=cortex-m0", "-mthumb", "-print-file-name=librdimon.a"], capture_output=True,
                         text=True, timeout=30)
    return out.returncode == 0 and Path(out.stdout.strip()).is_absolute()


_CM_LINK = ("--specs=rdimon.specs",)

TARGETS: dict[str, Target] = {
    t.name: t
    for t in [
        Target("host", "this machine, native gcc", "gcc", mode="native", fpu=True, cmake_toolchain="host.cmake"),
        Target(
            "cortex-m4f", "Cortex-M4F, hard float fpv4-sp-d16 (QEMU mps2-an386)", "arm-none-eabi-gcc",
            ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"), _CM_LINK,
            ("startup_cm.c",), "cm.ld", ("qemu-system-arm", "-M", "mps2-an386"), fpu=True,
            tools_prefix="arm-none-eabi-", cmake_toolchain="cortex-m4f.cmake",
        ),
        Target(
            "cortex-m0", "Cortex-M0, soft float (QEMU microbit, 256 KiB flash / 16 KiB RAM)", "arm-none-eabi-gcc",
            ("-mcpu=cortex-m0", "-mthumb"),
            _CM_LINK + ("-Wl,--defsym=ROM_SIZE=0x40000,--defsym=RAM_SIZE=0x4000",),
            ("startup_cm.c",), "cm.ld", ("qemu-system-arm", "-M", "microbit"),
            tools_prefix="arm-none-eabi-", cmake_toolchain="cortex-m0.cmake",
        ),
        Target(
            "rv32imc", "RV32IMC, soft float, ESP32-C3 class (QEMU virt)", "riscv64-unknown-elf-gcc",
            ("-march=rv32imc", "-mabi=ilp32", "--specs=picolibc.specs"), tuple(_RV_LINK), (), None,
            ("qemu-system-riscv32", "-M", "virt", "-bios", "none"),
            tools_prefix="riscv64-unknown-elf-", cmake_toolchain="rv32imc.cmake",
        ),
        Target(
            "rv32imafc", "RV32IMAFC, single-precision FPU (QEMU virt)", "riscv64-unknown-elf-gcc",
            ("-march=rv32imafc", "-mabi=ilp32f", "--specs=picolibc.specs"), tuple(_RV_LINK), (), None,
            ("qemu-system-riscv32", "-M", "virt", "-bios", "none"), fpu=True,
            tools_prefix="riscv64-unknown-elf-", cmake_toolchain="rv32imafc.cmake",
        ),
        Target(
            "xtensa-lx106", "Xtensa lx106 / ESP8266, compile-only (Debian's libgcc lacks soft-float)",
            "xtensa-lx106-elf-gcc", ("-mlongcalls", "-ffreestanding"), mode="compile",
            tools_prefix="xtensa-lx106-elf-", cmake_toolchain="xtensa-lx106.cmake",
        ),
    ]
}


def get_target(name: str) -> Target:
    if isinstance(name, Target):
        return name
    try:
        return TARGETS[name]
    except KeyError:
        raise ValueError(f"target must be one of {sorted(TARGETS)}, got {name!r}") from None


def targets(runnable_only: bool = True) -> list[str]:
    """Names of the targets usable on this machine (toolchain, C library and QEMU present).

    ``runnable_only=False`` also lists compile-only targets (xtensa-lx106).
    """
    return [n for n, t in TARGETS.items() if t.available and (t.runnable or not runnable_only)]
