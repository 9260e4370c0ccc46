# cortex-m4f (newlib + rdimon semihosting, QEMU mps2-an386). See shared/MCU.md section 3.
set(RBFK_CPU_FLAGS "-mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16")
set(RBFK_QEMU_MACHINE mps2-an386)
set(RBFK_MEMORY_OPTIONS "")  # cm.ld's default sizes
include(${CMAKE_CURRENT_LIST_DIR}/common-cortex-m.cmake)
