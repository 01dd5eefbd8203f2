import time, torch, torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
dev = "cuda"
for L in (4096, 262144):
    for cont in (False, True):
        buf = torch.randn(1, 16, L + 300, 128, device=dev, dtype=torch.bfloat16)
        q = torch.randn(1, 16, 1, 128, device=dev, dtype=torch.bfloat16)
        for name, ctx in (("default", None), ("no-cudnn", [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])):
            ts = []
            for i in range(12):
                k = buf[:, :, :L + i]
                if cont:
                    k = k.contiguous()
                torch.cuda.synchronize(); t0 = time.perf_counter()
                if ctx is None:
                    F.scaled_dot_product_attention(q, k, k)
                else:
                    with sdpa_kernel(ctx):
                        F.scaled_dot_product_attention(q, k, k)
                torch.cuda.synchronize(); ts.append(time.perf_counter() - t0)
            print(f"sdpa decode L={L} contiguous={cont} {name}: median of 10 new lengths {sorted(ts[2:])[5]*1e3:.3f} ms")
