# coding=utf-8
# florence-patch demo checkpoint: a tiny Florence-2-shaped processor (MIT, written for this project).
# Names, signatures and the statements that compatibility fixes rewrite (the special-token setup,
# the image-processor call, the prompt construction, the post-processing) have the shape of the
# published Florence-2 processor; the location vocabulary is smaller (NUM_LOC_TOKENS bins).
"""
Processor of the tiny Florence-2-shaped demo model: CLIP-style image processing + a BART-style tokenizer.
"""

import re
import logging
from typing import List, Optional, Union
import numpy as np

import torch

from transformers.feature_extraction_utils import BatchFeature
from transformers.image_utils import ImageInput, is_valid_image
from transformers.processing_utils import ProcessorMixin
from transformers.tokenization_utils_base import (
    PaddingStrategy,
    PreTokenizedInput,
    TextInput,
    TruncationStrategy,
)
from transformers.utils import TensorType


logger = logging.getLogger(__name__)

# Coordinates are quantised into this many bins per axis, one <loc_N> token per bin.
NUM_LOC_TOKENS = 100


def is_url(val) -> bool:
    return isinstance(val, str) and val.startswith("http")


def is_image_or_image_url(elem):
    return is_url(elem) or is_valid_image(elem)


def _is_str_or_image(elem):
    return isinstance(elem, (str)) or is_image_or_image_url(elem)


class Florence2Processor(ProcessorMixin):
    r"""
    Wraps a [`CLIPImageProcessor`] and a [`BartTokenizerFast`] into one processor: `__call__` turns images and
    task prompts into `pixel_values` and `input_ids`; `post_process_generation` turns generated text into a
    task answer.

    Args:
        image_processor ([`CLIPImageProcessor`]): required; must carry `image_seq_length`.
        tokenizer ([`BartTokenizerFast`]): required; gets the task and location tokens added.
    """

    attributes = ["image_processor", "tokenizer"]
    image_processor_class = "CLIPImageProcessor"
    tokenizer_class = ("BartTokenizer", "BartTokenizerFast")

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
    ):
        if image_processor is None:
            raise ValueError("You need to specify an `image_processor`.")
        if tokenizer is None:
            raise ValueError("You need to specify a `tokenizer`.")
        if not hasattr(image_processor, "image_seq_length"):
            raise ValueError("Image processor is missing an `image_seq_length` attribute.")

        self.image_seq_length = image_processor.image_seq_length

        tokens_to_add = {
                'additional_special_tokens': \
                    tokenizer.additional_special_tokens + \
                    ['<od>', '</od>', '<ocr>', '</ocr>'] + \
                    [f'<loc_{x}>' for x in range(NUM_LOC_TOKENS)] + \
                    ['<cap>', '</cap>', '<ncap>', '</ncap>', '<dcap>', '</dcap>', '<grounding>', '</grounding>', '<seg>', '</seg>', '<sep>', '<region_cap>', '</region_cap>', '<region_to_desciption>', '</region_to_desciption>', '<proposal>', '</proposal>', '<poly>', '</poly>', '<and>']
            }
        tokenizer.add_special_tokens(tokens_to_add)

        self.tasks_answer_post_processing_type = {
            '<OCR>': 'pure_text',
            '<OCR_WITH_REGION>': 'ocr',
            '<CAPTION>': 'pure_text',
            '<DETAILED_CAPTION>': 'pure_text',
            '<MORE_DETAILED_CAPTION>': 'pure_text',
            '<OD>': 'description_with_bboxes',
            '<DENSE_REGION_CAPTION>': 'description_with_bboxes',
            '<OPEN_VOCABULARY_DETECTION>': 'description_with_bboxes_or_polygons',
            '<REGION_TO_CATEGORY>': 'pure_text',
            '<REGION_TO_DESCRIPTION>': 'pure_text',
            '<REGION_TO_OCR>': 'pure_text',
            '<REGION_PROPOSAL>': 'bboxes'
        }

        # task tokens that stand alone are replaced by a fixed question
        self.task_prompts_without_inputs = {
            '<OCR>': 'What is the text in the image?',
            '<OCR_WITH_REGION>': 'What is the text in the image, with regions?',
            '<CAPTION>': 'What does the image describe?',
            '<DETAILED_CAPTION>': 'Describe in detail what is shown in the image.',
            '<MORE_DETAILED_CAPTION>': 'Describe with a paragraph what is shown in the image.',
            '<OD>': 'Locate the objects with category name in the image.',
            '<DENSE_REGION_CAPTION>': 'Locate the objects in the image, with their descriptions.',
            '<REGION_PROPOSAL>': 'Locate the region proposals in the image.'
        }

        # task tokens followed by an input are replaced by a question built around that input;
        # any other text (e.g. '<DocVQA>' + a question) goes to the tokenizer as it is
        self.task_prompts_with_input = {
            '<OPEN_VOCABULARY_DETECTION>': 'Locate {input} in the image.',
            '<REGION_TO_CATEGORY>': 'What is the region {input}?',
            '<REGION_TO_DESCRIPTION>': 'What does the region {input} describe?',
            '<REGION_TO_OCR>': 'What text is in the region {input}?',
        }

        self.post_processor = Florence2PostProcesser(tokenizer=tokenizer)


        super().__init__(image_processor, tokenizer)

    def _construct_prompts(self, text):
        prompts = []
        for _text in text:
            for task_token, task_prompt in self.task_prompts_without_inputs.items():
                if task_token in _text:
                    assert _text == task_token, f"Task token {task_token} should be the only token in the text."
                    _text = task_prompt
                    break
            for task_token, task_prompt in self.task_prompts_with_input.items():
                if task_token in _text:
                    _text = task_prompt.format(input=_text.replace(task_token, ''))
                    break
            prompts.append(_text)
        return prompts

    def __call__(
        self,
        text: Union[TextInput, PreTokenizedInput, List[TextInput], List[PreTokenizedInput]] = None,
        images: ImageInput = None,
        tokenize_newline_separately: bool = True,
        padding: Union[bool, str, PaddingStrategy] = False,
        truncation: Union[bool, str, TruncationStrategy] = None,
        max_length=None,
        return_tensors: Optional[Union[str, TensorType]] = TensorType.PYTORCH,
        do_resize: bool = None,
        do_normalize: bool = None,
        image_mean: Optional[Union[float, List[float]]] = None,
        image_std: Optional[Union[float, List[float]]] = None,
        data_format: Optional["ChannelDimension"] = "channels_first",  # noqa: F821
        input_data_format: Optional[
            Union[str, "ChannelDimension"]  # noqa: F821
        ] = None,
        resample: "PILImageResampling" = None,  # noqa: F821
        do_convert_rgb: bool = None,
        do_thumbnail: bool = None,
        do_align_long_axis: bool = None,
        do_rescale: bool = None,
    ) -> BatchFeature:
        """
        Images -> `pixel_values` (through the image processor), prompts -> `input_ids` and `attention_mask`
        (through the tokenizer, after task tokens are expanded into questions). `max_length` counts the
        image tokens too. Image options left at `None` fall back to the image processor's own settings.
        """

        return_token_type_ids = False

        if images is None:
            raise ValueError("`images` are expected as arguments to a `Florence2Processor` instance.")
        if text is None:
            logger.warning_once(
                "You are using Florence-2 without a text prompt."
            )
            text = ""

        if isinstance(text, List) and isinstance(images, List):
            if len(images) < len(text):
                raise ValueError(
                    f"Received {len(images)} images for {len(text)} prompts. Each prompt should be associated with an image."
                )
        if _is_str_or_image(text):
            text = [text]
        elif isinstance(text, list) and _is_str_or_image(text[0]):
            pass

        pixel_values = self.image_processor(
            images,
            do_resize=do_resize,
            do_normalize=do_normalize,
            return_tensors=return_tensors,
            image_mean=image_mean,
            image_std=image_std,
            input_data_format=input_data_format,
            data_format=data_format,
            resample=resample,
            do_convert_rgb=do_convert_rgb,
        )["pixel_values"]

        if max_length is not None:
            max_length -= self.image_seq_length  # the image tokens take part of the encoder's length

        text = self._construct_prompts(text)

        inputs = self.tokenizer(
            text,
            return_tensors=return_tensors,
            padding=padding,
            max_length=max_length,
            truncation=truncation,
            return_token_type_ids=return_token_type_ids,
        )

        return_data = {**inputs, "pixel_values": pixel_values}

        if return_token_type_ids:
            labels = inputs["input_ids"].masked_fill(inputs["token_type_ids"] == 0, -100)
            return_data.update({"labels": labels})
        return BatchFeature(data=return_data)

    def batch_decode(self, *args, **kwargs):
        """Forwards to the tokenizer's `batch_decode`."""
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        """Forwards to the tokenizer's `decode`."""
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self):
        tokenizer_input_names = self.tokenizer.model_input_names
        image_processor_input_names = self.image_processor.model_input_names
        return list(dict.fromkeys(tokenizer_input_names + image_processor_input_names))

    def post_process_generation(self, text, task, image_size):
        """
        Turn generated text (decoded without skipping special tokens) into the answer of `task`.

        Args:
            text (`str`): the generated text.
            task (`str`): the task token the prompt started with, e.g. '<OD>' or '<DocVQA>'.
            image_size (`Tuple[int, int]`): (width, height) of the image, to scale boxes back.
        """

        task_answer_post_processing_type = self.tasks_answer_post_processing_type.get(task, 'pure_text')
        task_answer = self.post_processor(
            text=text,
            image_size=image_size,
            parse_tasks=task_answer_post_processing_type,
        )[task_answer_post_processing_type]

        if task_answer_post_processing_type == 'pure_text':
            final_answer = task_answer
            # remove the special tokens
            final_answer = final_answer.replace('<s>', '').replace('</s>', '')
        elif task_answer_post_processing_type in ['od', 'description_with_bboxes', 'bboxes']:
            od_instances = task_answer
            bboxes_od = [_od_instance['bbox'] for _od_instance in od_instances]
            labels_od = [str(_od_instance['cat_name']) for _od_instance in od_instances]
            final_answer = {'bboxes': bboxes_od, 'labels': labels_od}
        elif task_answer_post_processing_type in ['ocr']:
            bboxes = [_od_instance['quad_box'] for _od_instance in task_answer]
            labels = [str(_od_instance['text']) for _od_instance in task_answer]
            final_answer = {'quad_boxes': bboxes, 'labels': labels}
        elif task_answer_post_processing_type in ['description_with_bboxes_or_polygons']:
            bboxes = [result['bbox'] for result in task_answer]
            bboxes_labels = [result['cat_name'] for result in task_answer]
            final_answer = {'bboxes': bboxes, 'bboxes_labels': bboxes_labels, 'polygons': [], 'polygons_labels': []}
        else:
            raise ValueError('Unknown task answer post processing type: {}'.format(task_answer_post_processing_type))

        final_answer = {
            task: final_answer}
        return final_answer


class BoxQuantizer(object):
    """Maps pixel coordinates to location bins and back ('floor' mode: a bin is read as its centre)."""

    def __init__(self, mode, bins):
        self.mode = mode
        self.bins = bins

    def _bin_sizes(self, size):
        (bins_w, bins_h), (size_w, size_h) = self.bins, size
        if self.mode != 'floor':
            raise ValueError('Incorrect quantization type.')
        return size_w / bins_w, size_h / bins_h

    def quantize(self, boxes: torch.Tensor, size):
        """(N, 4) xyxy pixel boxes -> (N, 4) bins."""
        bin_w, bin_h = self._bin_sizes(size)
        scale = boxes.new_tensor([bin_w, bin_h, bin_w, bin_h])
        upper = boxes.new_tensor([self.bins[0], self.bins[1], self.bins[0], self.bins[1]]) - 1
        return torch.minimum((boxes / scale).floor().clamp(min=0), upper).int()

    def dequantize(self, boxes: torch.Tensor, size):
        """(N, 4) bins -> (N, 4) xyxy pixel boxes."""
        bin_w, bin_h = self._bin_sizes(size)
        return (boxes + 0.5) * boxes.new_tensor([bin_w, bin_h, bin_w, bin_h], dtype=torch.float32)


class Florence2PostProcesser(object):
    """
    Parses generated text into task results: plain text, boxes with labels, OCR quads with text.

    Args:
        tokenizer: the processor's tokenizer (its special tokens are kept as whole units).
    """

    def __init__(
        self,
        tokenizer=None
    ):
        config = self._create_default_config()
        self.config = config
        self.parse_tasks = [task['TASK_NAME'] for task in config['PARSE_TASKS']]
        self.parse_tasks_configs = {task['TASK_NAME']: task for task in config['PARSE_TASKS']}

        self.tokenizer = tokenizer
        if self.tokenizer is not None:
            self.all_special_tokens = set(self.tokenizer.all_special_tokens)

        self.init_quantizers()

    def _create_default_config(self):
        return {
            'NUM_BBOX_HEIGHT_BINS': NUM_LOC_TOKENS,
            'NUM_BBOX_WIDTH_BINS': NUM_LOC_TOKENS,
            'BOX_QUANTIZATION_MODE': 'floor',
            'PARSE_TASKS': [
                {'TASK_NAME': 'ocr', 'PATTERN': r'(.+?)' + r'<loc_(\d+)>' * 8, 'AREA_THRESHOLD': 0.0},
                {'TASK_NAME': 'pure_text'},
                {'TASK_NAME': 'description_with_bboxes'},
                {'TASK_NAME': 'bboxes'},
                {'TASK_NAME': 'description_with_bboxes_or_polygons'},
            ],
        }

    def init_quantizers(self):
        self.box_quantizer = BoxQuantizer(
            self.config.get('BOX_QUANTIZATION_MODE', 'floor'),
            (self.config['NUM_BBOX_WIDTH_BINS'], self.config['NUM_BBOX_HEIGHT_BINS']),
        )

    def parse_ocr_from_text_and_spans(self, text, pattern, image_size, area_threshold=-1.0):
        text = text.replace('<s>', '').replace('</s>', '').replace('<pad>', '')
        instances = []
        for match in re.finditer(pattern, text):
            bins = torch.tensor([int(match.group(j)) for j in range(2, 10)], dtype=torch.float32).view(4, 2)
            corners = self.box_quantizer.dequantize(bins.reshape(2, 4), size=image_size).view(4, 2)
            width = corners[:, 0].max() - corners[:, 0].min()
            height = corners[:, 1].max() - corners[:, 1].min()
            if width * height < area_threshold * image_size[0] * image_size[1]:
                continue
            instances.append({'quad_box': corners.flatten().tolist(), 'text': match.group(1).strip()})
        return instances

    def parse_description_with_bboxes_from_text_and_spans(self, text, pattern, image_size, allow_empty_phrase=False):
        text = text.replace('<s>', '').replace('</s>', '').replace('<pad>', '')
        phrase_pattern = r"((?:[^<]|<(?!loc_))*)((?:<loc_\d+>){4,})"
        instances = []
        for phrase, locations in re.findall(phrase_pattern, text):
            phrase = re.sub(r'<[^>]*>', '', phrase).strip()
            if phrase == '' and not allow_empty_phrase:
                continue
            bins = [int(v) for v in re.findall(r'<loc_(\d+)>', locations)]
            for start in range(0, len(bins) - len(bins) % 4, 4):
                box = self.box_quantizer.dequantize(torch.tensor(bins[start:start + 4]), size=image_size).tolist()
                instances.append({'bbox': box, 'cat_name': phrase.encode('ascii', errors='ignore').decode('ascii')})
        return instances

    def __call__(
        self,
        text=None,
        image_size=None,
        parse_tasks=None,
    ):
        """
        Args:
            text: the generated text.
            image_size: (width, height).
            parse_tasks: a task name or a list of them; None parses all.
        """
        if parse_tasks is not None:
            if isinstance(parse_tasks, str):
                parse_tasks = [parse_tasks]
            for _parse_task in parse_tasks:
                assert _parse_task in self.parse_tasks, f'parse task {_parse_task} not supported'

        assert text is not None, 'text should be provided'

        parsed_dict = {
            'text': text
        }

        for task in self.parse_tasks:
            if parse_tasks is not None and task not in parse_tasks:
                continue

            pattern = self.parse_tasks_configs[task].get('PATTERN', None)

            if task == 'ocr':
                parsed_dict['ocr'] = self.parse_ocr_from_text_and_spans(
                    text,
                    pattern=pattern,
                    image_size=image_size,
                    area_threshold=self.parse_tasks_configs[task].get('AREA_THRESHOLD', 0.0),
                )
            elif task == 'pure_text':
                parsed_dict['pure_text'] = text
            elif task in ('description_with_bboxes', 'description_with_bboxes_or_polygons'):
                parsed_dict[task] = self.parse_description_with_bboxes_from_text_and_spans(
                    text,
                    pattern=pattern,
                    image_size=image_size,
                )
            elif task == 'bboxes':
                parsed_dict['bboxes'] = self.parse_description_with_bboxes_from_text_and_spans(
                    text,
                    pattern=pattern,
                    image_size=image_size,
                    allow_empty_phrase=True,
                )
            else:
                raise ValueError("task {} is not supported".format(task))

        return parsed_dict
