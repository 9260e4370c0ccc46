# The part every Cortex-M toolchain file shares (newlib + rdimon semihosting, QEMU). A target file
# sets RBFK_CPU_FLAGS, RBFK_QEMU_MACHINE and RBFK_MEMORY_OPTIONS (linker options, may be empty), then
# includes this one. See shared/MCU.md section 3.
set(CMAKE_SYSTEM_NAME Generic)
set(CMAKE_SYSTEM_PROCESSOR arm)
set(CMAKE_C_COMPILER arm-none-eabi-gcc)
set(CMAKE_TRY_COMPILE_TARGET_TYPE STATIC_LIBRARY)
set(CMAKE_C_FLAGS_INIT "${RBFK_CPU_FLAGS}")
set(RBFK_TARGET_DIR ${CMAKE_CURRENT_LIST_DIR})
set(RBFK_STARTUP_SOURCES ${RBFK_TARGET_DIR}/startup_cm.c)
set(RBFK_LINK_OPTIONS --specs=rdimon.specs -T ${RBFK_TARGET_DIR}/cm.ld ${RBFK_MEMORY_OPTIONS})
set(RBFK_EXE_SUFFIX .elf)
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-system-arm;-M;${RBFK_QEMU_MACHINE};-nographic;-monitor;none;-serial;none;-semihosting-config;enable=on,target=native;-kernel)
