# cortex-m0 (newlib + rdimon semihosting, QEMU microbit). See shared/MCU.md section 3.
set(RBFK_CPU_FLAGS "-mcpu=cortex-m0 -mthumb")
set(RBFK_QEMU_MACHINE microbit)
set(RBFK_MEMORY_OPTIONS -Wl,--defsym=ROM_SIZE=0x40000,--defsym=RAM_SIZE=0x4000)
include(${CMAKE_CURRENT_LIST_DIR}/common-cortex-m.cmake)
