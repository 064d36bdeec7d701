"""Quick codec measurement: python benchmarks/codec.py N_IMAGES NUM_STEPS T_END (lossless round trip on shared test images)."""
import numpy as np, torch, time, sys
from ddpm_codec.models.registry import resolve_model
from ddpm_codec import codec
m = resolve_model()
imgs = np.load('/work/shared/data/cifar10-subset.npz')['test_images'][:int(sys.argv[1])]
st = codec.CodecSettings(num_steps=int(sys.argv[2]), t_end=int(sys.argv[3]))
R=[]
for img in imgs:
    r = codec.encode(img, m, settings=st); t1=time.time(); d=codec.decode(r.data, m); t2=time.time()
    assert np.array_equal(d.image, img)
    rcc_kl = sum(s.kl_bits for s in r.steps); rcc_act = sum(s.actual_bits for s in r.steps)
    R.append((r.bits_per_dim, r.kl_bound_bpd, rcc_act/max(rcc_kl,1e-9), r.seconds, t2-t1, r.network_seconds/r.seconds, r.x0_ideal_bits/3072))
R=np.array(R); print(st); print('file bpd %.4f bound %.4f ratio %.3f | rcc actual/KL %.3f | enc %.2fs dec %.2fs net share %.2f | x0 %.3f' % (R[:,0].mean(), R[:,1].mean(), R[:,0].mean()/R[:,1].mean(), R[:,2].mean(), R[:,3].mean(), R[:,4].mean(), R[:,5].mean(), R[:,6].mean()))
