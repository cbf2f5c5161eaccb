/*
 * corral-guest: the guest the QEMU driver runs (docs/qemu.md, "The guest").
 *
 * A few KiB of freestanding x86-64 code that QEMU boots straight from `-kernel` (multiboot),
 * made to be seen: it talks on COM1 (115200 8N1, one line per message), dirties memory at the
 * rate it is told, panics through pvpanic, and powers the machine off on the ACPI power button.
 *
 * Guest -> host:
 *   corral-guest ready memory=<MiB> dirty=<bytes/s>   once per boot
 *   hb <n> dirty=<bytes/s>                            every 200 ms while it runs
 *   ok <command>                                      a command was taken
 *   power button                                      about to power off (ACPI S5)
 *   fault <vector> error=<e> rip=<hex> cr2=<hex>      a CPU exception; then a pvpanic
 * Host -> guest:
 *   dirty <bytes/s>   dirty that many bytes a second (one byte per 4 KiB page)
 *   panic             panic (pvpanic: QEMU's GUEST_PANICKED)
 *   poweroff          power off (ACPI S5: QEMU's SHUTDOWN, reason guest-shutdown)
 *   hang              stop everything, interrupts off: the process lives, the guest is gone
 * The boot command line (`-append`) may say `dirty=<bytes/s>`. Before `ready` it writes every
 * page it may dirty once, so that its memory is in use from the start.
 *
 * The work that touches memory runs in ring 3: under nested KVM on a paging-based hypervisor
 * (PVM) supervisor code is emulated instruction by instruction, user code runs natively. Ring 0
 * only sleeps (hlt) between ticks of the local APIC timer and hands each tick's work to ring 3.
 * Needs the q35 machine (ICH9 ACPI, pvpanic on ISA port 0x505); memory is dirtied between
 * 4 MiB and the end of the first RAM range the firmware reports (all of it below 2 GiB).
 */

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;

#define COM1 0x3f8
#define PVPANIC 0x505
#define PMBASE 0x600
#define HZ 100
#define BEAT_TICKS (HZ / 5)
#define PAGE 4096UL
#define DIRTY_FROM (4UL << 20)

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0,%1" ::"a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0,%1" ::"a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0,%1" ::"a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) {
  u8 v;
  __asm__ volatile("inb %1,%0" : "=a"(v) : "Nd"(port));
  return v;
}
static inline u16 inw(u16 port) {
  u16 v;
  __asm__ volatile("inw %1,%0" : "=a"(v) : "Nd"(port));
  return v;
}
static inline void lapic(u32 reg, u32 v) { *(volatile u32 *)(0xFEE00000UL + reg) = v; }

/* boot.S */
extern void isr_timer(void);
extern void run_user(void (*fn)(u64), u64 arg);
extern u64 gdt[], tss[];
extern volatile u64 ticks;
extern void exc0(void), exc1(void), exc2(void), exc3(void), exc4(void), exc5(void), exc6(void),
    exc7(void), exc8(void), exc9(void), exc10(void), exc11(void), exc12(void), exc13(void),
    exc14(void), exc15(void), exc16(void), exc17(void), exc18(void), exc19(void), exc20(void),
    exc21(void), exc22(void), exc23(void), exc24(void), exc25(void), exc26(void), exc27(void),
    exc28(void), exc29(void), exc30(void), exc31(void);
static void (*const exceptions[32])(void) = {
    exc0,  exc1,  exc2,  exc3,  exc4,  exc5,  exc6,  exc7,  exc8,  exc9,  exc10,
    exc11, exc12, exc13, exc14, exc15, exc16, exc17, exc18, exc19, exc20, exc21,
    exc22, exc23, exc24, exc25, exc26, exc27, exc28, exc29, exc30, exc31};

/* ---- COM1 ---- */

static void put_char(char c) {
  while (!(inb(COM1 + 5) & 0x20)) {
  }
  outb(COM1, (u8)c);
}
static void put_str(const char *s) {
  while (*s) put_char(*s++);
}
static void put_u64(u64 v) {
  char b[21];
  int i = 20;
  b[i] = 0;
  do {
    b[--i] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  put_str(b + i);
}
static void put_hex(u64 v) {
  put_str("0x");
  for (int shift = 60; shift >= 0; shift -= 4) put_char("0123456789abcdef"[(v >> shift) & 15]);
}

/* ---- The end of a guest ---- */

__attribute__((noreturn)) static void stop_forever(void) {
  for (;;) __asm__ volatile("cli; hlt");
}

__attribute__((noreturn)) static void panic(void) {
  outb(PVPANIC, 1);
  stop_forever();
}

__attribute__((noreturn)) static void power_off(void) {
  outw(PMBASE + 4, 1 << 13); /* PM1_CNT: SLP_EN with SLP_TYP 0, QEMU's soft off */
  stop_forever();
}

/* Called by boot.S for every CPU exception. */
__attribute__((noreturn, used)) void fault(u64 vector, u64 error, u64 rip, u64 cr2) {
  put_str("\nfault ");
  put_u64(vector);
  put_str(" error=");
  put_u64(error);
  put_str(" rip=");
  put_hex(rip);
  put_str(" cr2=");
  put_hex(cr2);
  put_str("\n");
  panic();
}

/* ---- Dirtying memory (ring 3) ---- */

static u64 dirty_pages, dirty_cursor, dirty_rate;

static void dirty(u64 pages) {
  for (u64 i = 0; i < pages; i++) {
    volatile u8 *page = (volatile u8 *)(DIRTY_FROM + dirty_cursor * PAGE);
    *page = (u8)(*page + 1);
    if (++dirty_cursor == dirty_pages) dirty_cursor = 0;
  }
}

/* ---- Commands ---- */

static char line[64];
static int line_len;

static u64 parse_u64(const char *s) {
  u64 v = 0;
  while (*s >= '0' && *s <= '9') v = v * 10 + (u64)(*s++ - '0');
  return v;
}

/* The position after `prefix` in `s`, or 0. */
static const char *after(const char *s, const char *prefix) {
  while (*prefix)
    if (*s++ != *prefix++) return 0;
  return s;
}

static void command(void) {
  const char *arg;
  line[line_len] = 0;
  line_len = 0;
  if ((arg = after(line, "dirty "))) {
    dirty_rate = parse_u64(arg);
    put_str("ok dirty ");
    put_u64(dirty_rate);
    put_str("\n");
  } else if (after(line, "panic")) {
    put_str("ok panic\n");
    panic();
  } else if (after(line, "poweroff")) {
    put_str("ok poweroff\n");
    power_off();
  } else if (after(line, "hang")) {
    put_str("ok hang\n");
    stop_forever();
  }
}

static void read_commands(void) {
  while (inb(COM1 + 5) & 1) {
    char c = (char)inb(COM1);
    if (c == '\n' || c == '\r') {
      if (line_len) command();
    } else if (line_len < (int)sizeof(line) - 1) {
      line[line_len++] = c;
    }
  }
}

/* ---- Set-up ---- */

struct idt_entry {
  u16 offset0, selector;
  u8 ist, flags;
  u16 offset1;
  u32 offset2, zero;
} __attribute__((packed));
static struct idt_entry idt[256];
static struct {
  u16 limit;
  u64 base;
} __attribute__((packed)) idt_ptr;

static void set_gate(int vector, void (*handler)(void)) {
  u64 a = (u64)handler;
  idt[vector] = (struct idt_entry){(u16)a, 0x08, 0, 0x8E, (u16)(a >> 16), (u32)(a >> 32), 0};
}

static void set_up_cpu(void) {
  /* The TSS (its rsp0 is the way back from ring 3), then the IDT. */
  u64 base = (u64)tss;
  gdt[5] = 103 | ((base & 0xffffff) << 16) | (0x89UL << 40) | (((base >> 24) & 0xff) << 56);
  gdt[6] = base >> 32;
  __asm__ volatile("ltr %w0" ::"r"(0x28));
  for (int v = 0; v < 32; v++) set_gate(v, exceptions[v]);
  set_gate(32, isr_timer);
  idt_ptr.limit = sizeof(idt) - 1;
  idt_ptr.base = (u64)idt;
  __asm__ volatile("lidt %0" ::"m"(idt_ptr));
}

static void set_up_devices(void) {
  /* COM1 at 115200 8N1, FIFOs on. */
  outb(COM1 + 1, 0);
  outb(COM1 + 3, 0x80);
  outb(COM1, 1);
  outb(COM1 + 1, 0);
  outb(COM1 + 3, 3);
  outb(COM1 + 2, 0xC7);
  /* ICH9 (q35) ACPI: PM registers at PMBASE, ACPI on, the power button enabled. */
  outl(0xCF8, 0x80000000 | (31 << 11) | 0x40);
  outl(0xCFC, PMBASE | 1);
  outl(0xCF8, 0x80000000 | (31 << 11) | 0x44);
  outb(0xCFC, inb(0xCFC) | 0x80);
  outw(PMBASE, 0xffff);
  outw(PMBASE + 2, 1 << 8);
  /* The legacy PIC moved off the exception vectors and masked; the local APIC timer ticks at
     HZ (its clock runs at 1 GHz in QEMU and in KVM, divided by 1 here). */
  outb(0x20, 0x11);
  outb(0xA0, 0x11);
  outb(0x21, 48);
  outb(0xA1, 56);
  outb(0x21, 4);
  outb(0xA1, 2);
  outb(0x21, 1);
  outb(0xA1, 1);
  outb(0x21, 0xFF);
  outb(0xA1, 0xFF);
  lapic(0xF0, 0x1FF);
  lapic(0x3E0, 0xB);
  lapic(0x320, 32 | (1 << 17));
  lapic(0x380, 1000000000 / HZ);
}

/* The multiboot information: flags, mem_lower, mem_upper (KiB above 1 MiB), ..., cmdline. */
void kmain(u32 magic, u32 *info) {
  set_up_cpu();
  set_up_devices();
  u64 memory = (magic == 0x2BADB002 && (info[0] & 1)) ? ((u64)info[2] + 1024) * 1024 : 0;
  dirty_pages = memory > DIRTY_FROM ? (memory - DIRTY_FROM) / PAGE : 0;
  if (magic == 0x2BADB002 && (info[0] & 4)) {
    for (const char *s = (const char *)(u64)info[4]; *s; s++) {
      const char *arg = after(s, "dirty=");
      if (arg) dirty_rate = parse_u64(arg);
    }
  }
  /* Every page it may dirty is written once before it says ready: its memory is in use, as a
     real guest's is (a migration sends a never-written page as almost nothing). */
  if (dirty_pages) run_user(dirty, dirty_pages);
  put_str("corral-guest ready memory=");
  put_u64(memory >> 20);
  put_str(" dirty=");
  put_u64(dirty_rate);
  put_str("\n");
  u64 seen = ticks, beats = 0;
  for (;;) {
    __asm__ volatile("sti; hlt; cli");
    if (ticks == seen) continue;
    u64 elapsed = ticks - seen;
    seen = ticks;
    read_commands();
    if (inw(PMBASE) & (1 << 8)) {
      outw(PMBASE, 1 << 8);
      put_str("power button\n");
      power_off();
    }
    if (dirty_rate && dirty_pages) run_user(dirty, dirty_rate * elapsed / HZ / PAGE);
    if (seen / BEAT_TICKS != (seen - elapsed) / BEAT_TICKS) {
      put_str("hb ");
      put_u64(beats++);
      put_str(" dirty=");
      put_u64(dirty_rate);
      put_str("\n");
    }
  }
}
