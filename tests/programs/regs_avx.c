/* regs_avx: registers live in a busy loop, so a dump stops the task in user
 * code with nothing saved to memory.  One asm block loads known values into
 * 14 general registers, the x87 stack top and control word, MXCSR, and
 * ymm0-15 (or, with AVX-512, zmm0-31 and k1-k7), then spins until the
 * SIGUSR1 handler sets a flag, then stores the registers back for the check.
 * (A signal handler does not disturb them: the kernel saves and restores
 * the whole register state around it.)  A helper thread writes READY once
 * the loop runs, i.e. once the registers hold the values. */
#include "cpt_test.h"
#include <pthread.h>

#define NGPR 14
#define X87_VALUE 1.2345678901234567e300
#define MXCSR_VALUE 0xff80u /* round toward zero + flush-to-zero, all masked */
#define FPUCW_VALUE 0x0f7fu /* round toward zero, 64-bit precision */

static volatile int go;
static volatile uint64_t spins;

static uint64_t gpr_in[NGPR], gpr_out[NGPR];
static uint64_t vec_in[32][8] __attribute__((aligned(64)));
static uint64_t vec_out[32][8] __attribute__((aligned(64)));
static uint64_t k_in[8], k_out[8];
static double x87_in = X87_VALUE, x87_out;
static uint32_t mxcsr_in = MXCSR_VALUE, mxcsr_out;
static uint16_t fpucw_in = FPUCW_VALUE, fpucw_out;

static void on_usr1(int sig)
{
	(void)sig;
	go = 1;
}

/* Shared by both variants: general registers and x87/SSE control state in,
 * spin, out.  The vector loads/stores are spliced in before and after. */
#define GPR_LOAD                                                               \
	"ldmxcsr %[mxin]\n\t"                                                  \
	"fldcw %[cwin]\n\t"                                                    \
	"fldl %[x87in]\n\t"                                                    \
	"mov 0+%[gin], %%rax\n\t"                                              \
	"mov 8+%[gin], %%rbx\n\t"                                              \
	"mov 16+%[gin], %%rcx\n\t"                                             \
	"mov 24+%[gin], %%rdx\n\t"                                             \
	"mov 32+%[gin], %%rsi\n\t"                                             \
	"mov 40+%[gin], %%rdi\n\t"                                             \
	"mov 48+%[gin], %%r8\n\t"                                              \
	"mov 56+%[gin], %%r9\n\t"                                              \
	"mov 64+%[gin], %%r10\n\t"                                             \
	"mov 72+%[gin], %%r11\n\t"                                             \
	"mov 80+%[gin], %%r12\n\t"                                             \
	"mov 88+%[gin], %%r13\n\t"                                             \
	"mov 96+%[gin], %%r14\n\t"                                             \
	"mov 104+%[gin], %%r15\n\t"
#define SPIN                                                                   \
	"1:\n\t"                                                               \
	"incq %[spins]\n\t"                                                    \
	"pause\n\t"                                                            \
	"cmpl $0, %[go]\n\t"                                                   \
	"je 1b\n\t"
#define GPR_STORE                                                              \
	"mov %%rax, 0+%[gout]\n\t"                                             \
	"mov %%rbx, 8+%[gout]\n\t"                                             \
	"mov %%rcx, 16+%[gout]\n\t"                                            \
	"mov %%rdx, 24+%[gout]\n\t"                                            \
	"mov %%rsi, 32+%[gout]\n\t"                                            \
	"mov %%rdi, 40+%[gout]\n\t"                                            \
	"mov %%r8, 48+%[gout]\n\t"                                             \
	"mov %%r9, 56+%[gout]\n\t"                                             \
	"mov %%r10, 64+%[gout]\n\t"                                            \
	"mov %%r11, 72+%[gout]\n\t"                                            \
	"mov %%r12, 80+%[gout]\n\t"                                            \
	"mov %%r13, 88+%[gout]\n\t"                                            \
	"mov %%r14, 96+%[gout]\n\t"                                            \
	"mov %%r15, 104+%[gout]\n\t"                                           \
	"fstpl %[x87out]\n\t"                                                  \
	"fnstcw %[cwout]\n\t"                                                  \
	"stmxcsr %[mxout]\n\t"                                                 \
	"fldcw %[cwdef]\n\t"                                                   \
	"ldmxcsr %[mxdef]\n\t"
#define OPERANDS                                                               \
	: [gout] "=m"(gpr_out), [vout] "=m"(vec_out), [kout] "=m"(k_out),      \
	  [x87out] "=m"(x87_out), [mxout] "=m"(mxcsr_out),                     \
	  [cwout] "=m"(fpucw_out), [spins] "+m"(spins)                         \
	: [gin] "m"(gpr_in), [vin] "m"(vec_in), [kin] "m"(k_in),               \
	  [x87in] "m"(x87_in), [mxin] "m"(mxcsr_in), [cwin] "m"(fpucw_in),     \
	  [go] "m"(go), [mxdef] "m"(mxcsr_default), [cwdef] "m"(fpucw_default)
#define GPR_CLOBBERS                                                           \
	"rax", "rbx", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11",   \
	"r12", "r13", "r14", "r15", "cc", "memory"

static const uint32_t mxcsr_default = 0x1f80;
static const uint16_t fpucw_default = 0x037f;

static void spin_avx(void)
{
	__asm__ volatile(GPR_LOAD
			 "vmovdqu 0+%[vin], %%ymm0\n\t"
			 "vmovdqu 64+%[vin], %%ymm1\n\t"
			 "vmovdqu 128+%[vin], %%ymm2\n\t"
			 "vmovdqu 192+%[vin], %%ymm3\n\t"
			 "vmovdqu 256+%[vin], %%ymm4\n\t"
			 "vmovdqu 320+%[vin], %%ymm5\n\t"
			 "vmovdqu 384+%[vin], %%ymm6\n\t"
			 "vmovdqu 448+%[vin], %%ymm7\n\t"
			 "vmovdqu 512+%[vin], %%ymm8\n\t"
			 "vmovdqu 576+%[vin], %%ymm9\n\t"
			 "vmovdqu 640+%[vin], %%ymm10\n\t"
			 "vmovdqu 704+%[vin], %%ymm11\n\t"
			 "vmovdqu 768+%[vin], %%ymm12\n\t"
			 "vmovdqu 832+%[vin], %%ymm13\n\t"
			 "vmovdqu 896+%[vin], %%ymm14\n\t"
			 "vmovdqu 960+%[vin], %%ymm15\n\t"
			 SPIN
			 "vmovdqu %%ymm0, 0+%[vout]\n\t"
			 "vmovdqu %%ymm1, 64+%[vout]\n\t"
			 "vmovdqu %%ymm2, 128+%[vout]\n\t"
			 "vmovdqu %%ymm3, 192+%[vout]\n\t"
			 "vmovdqu %%ymm4, 256+%[vout]\n\t"
			 "vmovdqu %%ymm5, 320+%[vout]\n\t"
			 "vmovdqu %%ymm6, 384+%[vout]\n\t"
			 "vmovdqu %%ymm7, 448+%[vout]\n\t"
			 "vmovdqu %%ymm8, 512+%[vout]\n\t"
			 "vmovdqu %%ymm9, 576+%[vout]\n\t"
			 "vmovdqu %%ymm10, 640+%[vout]\n\t"
			 "vmovdqu %%ymm11, 704+%[vout]\n\t"
			 "vmovdqu %%ymm12, 768+%[vout]\n\t"
			 "vmovdqu %%ymm13, 832+%[vout]\n\t"
			 "vmovdqu %%ymm14, 896+%[vout]\n\t"
			 "vmovdqu %%ymm15, 960+%[vout]\n\t"
			 "vzeroupper\n\t"
			 GPR_STORE
			 OPERANDS
			 : GPR_CLOBBERS, "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5",
			   "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13",
			   "xmm14", "xmm15");
}

#define ZLOAD(n) "vmovdqu64 " #n "*64+%[vin], %%zmm" #n "\n\t"
#define ZSTORE(n) "vmovdqu64 %%zmm" #n ", " #n "*64+%[vout]\n\t"
#define KLOAD(n) "kmovw " #n "*8+%[kin], %%k" #n "\n\t"
#define KSTORE(n) "kmovw %%k" #n ", %%eax\n\t" "mov %%rax, " #n "*8+%[kout]\n\t"

__attribute__((target("avx512f")))
static void spin_avx512(void)
{
	__asm__ volatile(KLOAD(1) KLOAD(2) KLOAD(3) KLOAD(4) KLOAD(5) KLOAD(6) KLOAD(7)
			 ZLOAD(0) ZLOAD(1) ZLOAD(2) ZLOAD(3) ZLOAD(4) ZLOAD(5) ZLOAD(6)
			 ZLOAD(7) ZLOAD(8) ZLOAD(9) ZLOAD(10) ZLOAD(11) ZLOAD(12) ZLOAD(13)
			 ZLOAD(14) ZLOAD(15) ZLOAD(16) ZLOAD(17) ZLOAD(18) ZLOAD(19)
			 ZLOAD(20) ZLOAD(21) ZLOAD(22) ZLOAD(23) ZLOAD(24) ZLOAD(25)
			 ZLOAD(26) ZLOAD(27) ZLOAD(28) ZLOAD(29) ZLOAD(30) ZLOAD(31)
			 GPR_LOAD
			 SPIN
			 GPR_STORE
			 ZSTORE(0) ZSTORE(1) ZSTORE(2) ZSTORE(3) ZSTORE(4) ZSTORE(5)
			 ZSTORE(6) ZSTORE(7) ZSTORE(8) ZSTORE(9) ZSTORE(10) ZSTORE(11)
			 ZSTORE(12) ZSTORE(13) ZSTORE(14) ZSTORE(15) ZSTORE(16) ZSTORE(17)
			 ZSTORE(18) ZSTORE(19) ZSTORE(20) ZSTORE(21) ZSTORE(22) ZSTORE(23)
			 ZSTORE(24) ZSTORE(25) ZSTORE(26) ZSTORE(27) ZSTORE(28) ZSTORE(29)
			 ZSTORE(30) ZSTORE(31)
			 KSTORE(1) KSTORE(2) KSTORE(3) KSTORE(4) KSTORE(5) KSTORE(6)
			 KSTORE(7)
			 "vzeroupper\n\t"
			 OPERANDS
			 : GPR_CLOBBERS, "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5",
			   "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13",
			   "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20",
			   "xmm21", "xmm22", "xmm23", "xmm24", "xmm25", "xmm26", "xmm27",
			   "xmm28", "xmm29", "xmm30", "xmm31", "k1", "k2", "k3", "k4", "k5",
			   "k6", "k7");
}

static void *announce(void *arg)
{
	(void)arg;
	while (spins == 0)
		cpt_sleep_ms(1);
	cpt_ready();
	return NULL;
}

int main(int argc, char **argv)
{
	cpt_init(argc, argv, 0, "");
	__builtin_cpu_init();
	int avx512 = __builtin_cpu_supports("avx512f");
	if (!__builtin_cpu_supports("avx"))
		cpt_skip("the CPU (or the kernel) does not support AVX");
	unsigned nvec = avx512 ? 32 : 16, width = avx512 ? 8 : 4; /* in u64 */

	uint64_t seed = 0x243f6a8885a308d3ULL;
	for (int i = 0; i < NGPR; i++)
		gpr_in[i] = cpt_xorshift(&seed);
	for (unsigned r = 0; r < nvec; r++)
		for (unsigned w = 0; w < width; w++)
			vec_in[r][w] = cpt_xorshift(&seed);
	for (int k = 1; k < 8; k++)
		k_in[k] = cpt_xorshift(&seed) & 0xffff;

	/* Helper thread created with SIGUSR1 still blocked: the signal must go
	 * to the spinning main thread. */
	pthread_t helper;
	CHECK(pthread_create(&helper, NULL, announce, NULL) == 0, "pthread_create");
	struct sigaction sa = { 0 };
	sa.sa_handler = on_usr1;
	CHECK(sigaction(SIGUSR1, &sa, NULL) == 0, "sigaction: %m");
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	CHECK(sigprocmask(SIG_UNBLOCK, &set, NULL) == 0, "unblock: %m");

	if (avx512)
		spin_avx512();
	else
		spin_avx();
	pthread_join(helper, NULL);

	for (int i = 0; i < NGPR; i++)
		CHECK(gpr_out[i] == gpr_in[i], "general register #%d is %#lx, want %#lx", i,
		      (unsigned long)gpr_out[i], (unsigned long)gpr_in[i]);
	for (unsigned r = 0; r < nvec; r++)
		for (unsigned w = 0; w < width; w++)
			CHECK(vec_out[r][w] == vec_in[r][w], "%s%u qword %u is %#lx, want %#lx",
			      avx512 ? "zmm" : "ymm", r, w, (unsigned long)vec_out[r][w],
			      (unsigned long)vec_in[r][w]);
	if (avx512)
		for (int k = 1; k < 8; k++)
			CHECK(k_out[k] == k_in[k], "k%d is %#lx, want %#lx", k,
			      (unsigned long)k_out[k], (unsigned long)k_in[k]);
	CHECK(mxcsr_out == MXCSR_VALUE, "MXCSR is %#x, want %#x", mxcsr_out, MXCSR_VALUE);
	CHECK(fpucw_out == FPUCW_VALUE, "x87 control word is %#x, want %#x", fpucw_out,
	      FPUCW_VALUE);
	CHECK(memcmp(&x87_out, &x87_in, sizeof(double)) == 0, "x87 st(0) is %g, want %g",
	      x87_out, x87_in);
	cpt_report("INFO checked %s registers after %lu spins", avx512 ? "AVX-512" : "AVX",
		   (unsigned long)spins);
	cpt_ok();
}
