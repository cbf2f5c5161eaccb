/*
 * corral-guest's entry (see guest.c): QEMU's multiboot loader jumps to _start in 32-bit
 * protected mode without paging. This builds identity page tables for the first 64 GiB (2 MiB
 * pages, user-accessible: ring 3 dirties memory through them), enters long mode and calls
 * kmain in ring 0. Also here: the exception and timer entries, and run_user.
 */
    .set MB_MAGIC, 0x1BADB002
    .set MB_FLAGS, 0x00010003      /* page-aligned, memory info, a.out kludge (flat image) */
    .set PDS, 64                   /* page directories: 64 x 1 GiB */
    .set USER_DATA, 0x1b
    .set USER_CODE, 0x23
    .set LAPIC_EOI, 0xFEE000B0

    .code32
    .section .multiboot, "a"
    .align 4
mb_header:
    .long MB_MAGIC, MB_FLAGS, -(MB_MAGIC + MB_FLAGS)
    .long mb_header, _load_start, _load_end, _bss_end, _start

    .section .text32, "ax"
    .global _start
_start:
    mov %eax, mb_magic
    mov %ebx, mb_info
    /* PML4[0] -> PDPT; PDPT[i] -> PD i; PD entries map 2 MiB each. */
    lea 7+pdpt, %eax
    mov %eax, pml4
    xor %ecx, %ecx
1:  mov %ecx, %eax
    shl $12, %eax
    lea 7+pd(%eax), %eax
    mov %eax, pdpt(,%ecx,8)
    inc %ecx
    cmp $PDS, %ecx
    jne 1b
    xor %ecx, %ecx
2:  mov %ecx, %eax
    shl $21, %eax
    or $0x87, %eax                 /* present, writable, user, 2 MiB */
    mov %eax, pd(,%ecx,8)
    mov %ecx, %eax
    shr $11, %eax
    mov %eax, pd+4(,%ecx,8)
    inc %ecx
    cmp $(PDS*512), %ecx
    jne 2b
    mov %cr4, %eax
    or $0x20, %eax                 /* PAE */
    mov %eax, %cr4
    mov $pml4, %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx          /* EFER.LME */
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax           /* PG | PE */
    mov %eax, %cr0
    lgdt gdt_ptr
    ljmp $8, $long_mode

    .code64
    .section .text
long_mode:
    mov $16, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $stack_top, %rsp
    mov mb_magic(%rip), %edi
    mov mb_info(%rip), %esi
    call kmain
3:  cli
    hlt
    jmp 3b

/* run_user(fn, arg): runs fn(arg) in ring 3 with IOPL 3 and interrupts off, and returns when
   fn does. The way back is an invalid opcode at user_return, which exc6 recognises: a software
   interrupt would do, but a nested hypervisor (PVM) refuses `int` from ring 3. */
    .global run_user
run_user:
    push %rbx
    push %rbp
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, kernel_rsp(%rip)
    mov %rsp, tss+4(%rip)          /* TSS.rsp0: the stack the way back lands on */
    pushq $USER_DATA
    pushq $user_stack_top
    pushq $0x3002                  /* rflags: IOPL 3 */
    pushq $USER_CODE
    pushq $user_trampoline
    mov %rdi, %rax
    mov %rsi, %rdi
    iretq
user_trampoline:
    call *%rax
user_return:
    ud2
back_from_user:
    mov kernel_rsp(%rip), %rsp
    mov $16, %ax
    mov %ax, %ds
    mov %ax, %es
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbp
    pop %rbx
    ret

/* Exceptions: each entry pushes a zero where the CPU pushes no error code, then its vector;
   fault() reports it and panics. An invalid opcode at user_return is run_user's way back. */
    .macro exception vector, has_error
    .global exc\vector
exc\vector:
    .if \vector == 6
    push %rax
    lea user_return(%rip), %rax
    cmp %rax, 8(%rsp)
    pop %rax
    je back_from_user
    .endif
    .if \has_error == 0
    pushq $0
    .endif
    pushq $\vector
    jmp exception_common
    .endm
    exception 0,0;  exception 1,0;  exception 2,0;  exception 3,0
    exception 4,0;  exception 5,0;  exception 6,0;  exception 7,0
    exception 8,1;  exception 9,0;  exception 10,1; exception 11,1
    exception 12,1; exception 13,1; exception 14,1; exception 15,0
    exception 16,0; exception 17,1; exception 18,0; exception 19,0
    exception 20,0; exception 21,1; exception 22,0; exception 23,0
    exception 24,0; exception 25,0; exception 26,0; exception 27,0
    exception 28,0; exception 29,1; exception 30,1; exception 31,0
exception_common:
    mov (%rsp), %rdi               /* vector */
    mov 8(%rsp), %rsi              /* error code */
    mov 16(%rsp), %rdx             /* rip */
    mov %cr2, %rcx
    call fault

/* The local APIC timer (vector 32): count a tick. */
    .global isr_timer
isr_timer:
    push %rax
    incq ticks(%rip)
    mov $LAPIC_EOI, %rax
    movl $0, (%rax)
    pop %rax
    iretq

    .section .data
    .align 16
    .global gdt, tss, ticks
gdt:
    .quad 0
    .quad 0x00209A0000000000       /* 0x08 kernel code */
    .quad 0x0000920000000000       /* 0x10 kernel data */
    .quad 0x0000F20000000000       /* 0x18 user data */
    .quad 0x0020FA0000000000       /* 0x20 user code */
    .quad 0, 0                     /* 0x28 the TSS, filled in by kmain */
gdt_end:
gdt_ptr:
    .word gdt_end - gdt - 1
    .quad gdt
mb_magic: .long 0
mb_info: .long 0
ticks: .quad 0
kernel_rsp: .quad 0
tss: .skip 104

    .section .bss
    .align 4096
pml4: .skip 4096
pdpt: .skip 4096
pd:   .skip 4096*PDS
    .skip 16384
stack_top:
    .skip 16384
user_stack_top:
