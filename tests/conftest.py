import os
import socket

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tiny_unet_config():
    return dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=[16, 32], layers_per_block=1,
                norm_num_groups=8, down_block_types=["DownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "UpBlock2D"])
