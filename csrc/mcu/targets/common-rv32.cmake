# The part every RV32 toolchain file shares (picolibc semihost crt0, QEMU virt -bios none). A target
# file sets RBFK_ARCH_FLAGS (-march/-mabi), then includes this one. See shared/MCU.md section 4.
set(CMAKE_SYSTEM_NAME Generic)
set(CMAKE_SYSTEM_PROCESSOR riscv32)
set(CMAKE_C_COMPILER riscv64-unknown-elf-gcc)
set(CMAKE_TRY_COMPILE_TARGET_TYPE STATIC_LIBRARY)
set(CMAKE_C_FLAGS_INIT "${RBFK_ARCH_FLAGS} --specs=picolibc.specs")
set(RBFK_STARTUP_SOURCES "")
set(RBFK_LINK_OPTIONS --crt0=semihost --oslib=semihost
    -Wl,--defsym=__flash=0x80000000,--defsym=__flash_size=0x100000,--defsym=__ram=0x80100000,--defsym=__ram_size=0x100000)
set(RBFK_EXE_SUFFIX .elf)
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-system-riscv32;-M;virt;-bios;none;-nographic;-monitor;none;-serial;none;-semihosting-config;enable=on,target=native;-kernel)
