"""The GPU memory warning (KidneyTumorSegSlicer/gpu.py): asked of the driver, never of torch (stand-ins:
slicer_stubs.py)."""
from __future__ import annotations

from slicer_stubs import StubbedModuleTest


class GpuWithoutSlicerTest(StubbedModuleTest):
    def test_gpu_warning_asks_the_driver_not_torch(self):
        gpu = self.helper("gpu")
        smi = "NVIDIA H100 80GB HBM3, 81559\nNVIDIA GeForce GT 1030, 2001\n"
        self.assertEqual(gpu.parseNvidiaSmi(smi), [("NVIDIA H100 80GB HBM3", 81559 / 1024), ("NVIDIA GeForce GT 1030", 2001 / 1024)])
        self.assertEqual(gpu.parseNvidiaSmi("garbage\n"), [])
        self.assertEqual(gpu.gpuMemoryWarning("auto", gpus=[("H100", 79.6)]), "")
        self.assertIn("(GT 1030) has 1.9 GiB of memory; at least 4 GiB", gpu.gpuMemoryWarning("cuda", gpus=[("GT 1030", 1.95)]))
        self.assertEqual(gpu.gpuMemoryWarning("auto", gpus=[]), "")  # no GPU: auto runs on the CPU
        self.assertIn("No NVIDIA GPU was found", gpu.gpuMemoryWarning("cuda", gpus=[]))
        self.assertEqual(self.logic.gpuMemoryWarning("cpu"), "")
        self.assertNotIn("torch", gpu.__dict__)
        # a device name is read by the core's one parser: cuda:N is the driver's N-th GPU
        gpus = [("H100", 79.6), ("GT 1030", 1.95)]
        self.assertEqual(gpu.gpuMemoryWarning("cuda:0", gpus=gpus), "")
        self.assertIn("(GT 1030) has 1.9 GiB", gpu.gpuMemoryWarning("cuda:1", gpus=gpus))
        self.assertIn("There is no GPU cuda:2", gpu.gpuMemoryWarning("cuda:2", gpus=gpus))
        self.assertEqual(gpu.gpuMemoryWarning("cpu", gpus=[]), "")
        self.assertEqual(gpu.gpuMemoryWarning("gpu0", gpus=gpus), "unknown device 'gpu0': use auto, cpu, cuda or cuda:N")
