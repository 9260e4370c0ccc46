/*
 * startup_cm.c - minimal Cortex-M vector table + reset for QEMU (mps2-an386, microbit, ...).
 *
 * newlib's rdimon crt0 (_start) zeroes .bss, asks the debugger (QEMU semihosting) for the heap and
 * stack, calls main() and exit(), whose SYS_EXIT becomes QEMU's exit status. It has no M-profile
 * vector table, so this file supplies one at address 0 (the linker script keeps .vectors first).
 * With a hardware FPU, CP10/CP11 must be enabled before the first FP instruction.
 */
#include <stdint.h>

extern void _start(void);
/* A linker-script symbol (the end of RAM), declared as a function only so its address can sit in
 * the table of function pointers without an object-to-function pointer cast (ISO C forbids it). */
extern void __StackTop(void);

void rbfk_reset_handler(void);
void rbfk_fault_handler(void);

void rbfk_reset_handler(void)
{
#if defined(__ARM_FP)
    *(volatile uint32_t *)0xE000ED88u |= (0xFu << 20); /* CPACR: full access to CP10, CP11 */
    __asm__ volatile("dsb\n\tisb" ::: "memory");
#endif
    _start();
}

/* Any fault: semihosting SYS_EXIT with ADP_Stopped_RunTimeErrorUnknown, QEMU exits with status 1. */
void rbfk_fault_handler(void)
{
    __asm__ volatile("movs r0, #0x18\n\tldr r1, =0x20023\n\tbkpt 0xab" ::: "r0", "r1", "memory");
    for (;;) {
    }
}

typedef void (*rbfk_vector)(void);

__attribute__((section(".vectors"), used)) const rbfk_vector rbfk_vector_table[16] = {
    __StackTop,               /* initial SP */
    rbfk_reset_handler,       /* reset */
    rbfk_fault_handler,       /* NMI */
    rbfk_fault_handler,       /* HardFault */
    rbfk_fault_handler,       /* MemManage */
    rbfk_fault_handler,       /* BusFault */
    rbfk_fault_handler,       /* UsageFault */
    0, 0, 0, 0,
    rbfk_fault_handler,       /* SVC */
    rbfk_fault_handler,       /* DebugMon */
    0,
    rbfk_fault_handler,       /* PendSV */
    rbfk_fault_handler        /* SysTick */
};
